package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunExitCodes checks the exit code of each class of error, which
// scripts cannot see (`! exec` only says "non-zero"): 2 for what the user
// fixes by changing the command line, 1 for everything else. Each error
// is one line on stderr, prefixed with the program's name, with nothing
// on stdout.
func TestRunExitCodes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const missing = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"
	tests := []struct {
		name string
		args []string // after --cache-dir DIR; "{digest}" is what setup returned (a digest, or a file's path)
		// setup prepares the cache directory dir, which does not exist
		// yet, and returns a digest for the args.
		setup func(t *testing.T, dir string) string
		code  int
		want  string // a substring of the stderr line
	}{
		// Usage errors: exit 2.
		{name: "unknown command", args: []string{"frobnicate"}, code: exitUsage, want: `unknown command "frobnicate"`},
		{name: "unknown flag", args: []string{"ls", "--frobnicate"}, code: exitUsage, want: "unknown flag: --frobnicate"},
		{name: "unknown shorthand flag", args: []string{"ls", "-Z"}, code: exitUsage, want: "unknown shorthand flag"},
		{name: "flag without its value", args: []string{"prune", "--max-size"}, code: exitUsage, want: "flag needs an argument"},
		{name: "flag value of the wrong type", args: []string{"warm", "--jobs", "many", "x"}, code: exitUsage, want: `invalid argument "many"`},
		{name: "argument to a command that takes none", args: []string{"dir", "extra"}, code: exitUsage, want: "takes no arguments"},
		{name: "missing argument", args: []string{"cat"}, code: exitUsage, want: "needs one DIGEST"},
		{name: "too many arguments", args: []string{"put", "a", "b"}, code: exitUsage, want: "needs one FILE or -"},
		{name: "warm without an image", args: []string{"warm"}, code: exitUsage, want: "warm needs at least one IMAGE"},
		{name: "digest with a path trick", args: []string{"cat", "sha256:../../etc/passwd"}, code: exitUsage, want: "invalid digest"},
		{name: "digest in uppercase hex", args: []string{"cat", strings.ToUpper(missing)}, code: exitUsage, want: "invalid digest"},
		{name: "digest of an unknown algorithm", args: []string{"cat", "md5:d41d8cd98f00b204e9800998ecf8427e"}, code: exitUsage, want: "invalid digest"},
		{name: "digest of the wrong length", args: []string{"cat", "sha256:abc"}, code: exitUsage, want: "invalid digest"},
		{name: "digest with a NUL byte", args: []string{"cat", missing[:20] + "\x00" + missing[21:]}, code: exitUsage, want: "invalid digest"},
		{name: "unknown sort order", args: []string{"ls", "--sort", "biggest"}, code: exitUsage, want: `--sort "biggest"`},
		{name: "malformed size", args: []string{"prune", "--max-size", "lots"}, code: exitUsage, want: `invalid size "lots"`},
		{name: "size of an unknown unit", args: []string{"prune", "--max-size", "10XB"}, code: exitUsage, want: `unknown unit "XB"`},
		{name: "negative size", args: []string{"prune", "--max-size", "-5"}, code: exitUsage, want: `invalid size "-5"`},
		{name: "size zero, which is clear", args: []string{"prune", "--max-size", "0"}, code: exitUsage, want: "use `layercache clear`"},
		{name: "size past the largest file size", args: []string{"prune", "--max-size", "99999999999999999999T"}, code: exitUsage, want: `invalid size "99999999999999999999T": out of range`},
		{name: "size of 2^63 bytes", args: []string{"prune", "--max-size", "8388608TiB"}, code: exitUsage, want: "out of range"},
		{name: "malformed age", args: []string{"prune", "--max-age", "forever"}, code: exitUsage, want: `invalid age "forever"`},
		{name: "age past the longest duration", args: []string{"prune", "--max-age", "1e300d"}, code: exitUsage, want: `invalid age "1e300d": out of range`},
		{name: "age just past 2^63 ns, in weeks", args: []string{"prune", "--max-age", "15251w"}, code: exitUsage, want: "out of range"},
		{name: "age that is not a number", args: []string{"prune", "--max-age", "NaNd"}, code: exitUsage, want: `invalid age "NaNd"`},
		{name: "age that is infinite", args: []string{"prune", "--max-age", "Infw"}, code: exitUsage, want: `invalid age "Infw"`},
		{name: "age in hours past the longest", args: []string{"prune", "--max-age", "9999999999h"}, code: exitUsage, want: `invalid age "9999999999h"`},
		{name: "age zero, which is clear", args: []string{"prune", "--max-age", "0d"}, code: exitUsage, want: "use `layercache clear`"},
		{name: "malformed platform", args: []string{"warm", "--platform", "linux/amd64/v3/extra", f.multi}, code: exitUsage, want: "--platform"},
		{name: "platform and all platforms", args: []string{"warm", "--platform", "linux/arm64", "--all-platforms", f.multi}, code: exitUsage, want: "exclude each other"},
		{name: "no jobs for warm", args: []string{"warm", "-j", "0", f.single}, code: exitUsage, want: "--jobs must be at least 1"},
		{name: "no jobs for verify", args: []string{"verify", "-j", "0"}, code: exitUsage, want: "--jobs must be at least 1"},
		{name: "unparsable reference", args: []string{"warm", "Not A/Reference"}, code: exitUsage, want: "parsing reference"},
		{name: "mirror that is not REGISTRY=URL", args: []string{"warm", "--mirror", "mirror.example", f.single}, code: exitUsage, want: `--mirror: mirror "mirror.example": want REGISTRY=URL`},
		{name: "mirror of a bad URL", args: []string{"warm", "--mirror", "docker.io=ftp://mirror.example", f.single}, code: exitUsage, want: "--mirror: mirror \"ftp://mirror.example\": the URL must start with http:// or https://"},
		{name: "hosts dir that does not exist", args: []string{"warm", "--hosts-dir", "/nonexistent/layercache-hosts", f.single}, code: exitUsage, want: "--hosts-dir: stat /nonexistent/layercache-hosts: no such file or directory"},
		{name: "hosts.toml of an unknown capability", args: []string{"warm", "--hosts-dir", "{digest}", f.single}, setup: badHostsDir, code: exitUsage, want: `/docker.io/hosts.toml: host "https://mirror.example": unknown capability "fetch"`},
		{name: "clear without --yes off a terminal", args: []string{"clear"}, code: exitUsage, want: "refusing to clear"},
		{name: "demo of no layers", args: []string{"demo", "--layers", "0"}, code: exitUsage, want: "must be at least 1"},
		{name: "check without an image", args: []string{"check"}, code: exitUsage, want: "check needs at least one IMAGE"},
		{name: "check of an unparsable reference", args: []string{"check", "Not A/Reference"}, code: exitUsage, want: "parsing reference"},
		{name: "check of a platform and all platforms", args: []string{"check", "--platform", "linux/arm64", "--all-platforms", f.multi}, code: exitUsage, want: "exclude each other"},
		{name: "check of a malformed platform", args: []string{"check", "--platform", "linux/amd64/v3/extra", f.multi}, code: exitUsage, want: "--platform"},
		{name: "no jobs for check", args: []string{"check", "-j", "0", f.single}, code: exitUsage, want: "--jobs must be at least 1"},
		{name: "attestations of one platform", args: []string{"warm", "--attestations", f.multi}, code: exitUsage, want: "--attestations needs --all-platforms"},
		{name: "check of attestations of one platform", args: []string{"check", "--attestations", f.multi}, code: exitUsage, want: "--attestations needs --all-platforms"},
		{name: "image list line of two words", args: []string{"warm", "--from", "{digest}"}, setup: listFile("# two on one line\n" + f.single + " " + f.multi + "\n"), code: exitUsage, want: ":2: " + `"` + f.single + " " + f.multi + `" holds more than one word`},
		{name: "image list line that does not parse", args: []string{"check", "--from", "{digest}"}, setup: listFile(f.single + "\n\nNot/A/Reference!\n"), code: exitUsage, want: `:3: parsing reference "Not/A/Reference!"`},
		{name: "image list of nothing", args: []string{"warm", "--from", "{digest}"}, setup: listFile("# nothing\n\n"), code: exitUsage, want: "warm needs at least one IMAGE: "},
		{name: "image list line too long", args: []string{"warm", "--from", "{digest}"}, setup: listFile(strings.Repeat("x", 70000)), code: exitUsage, want: ":1: line longer than 65536 bytes"},
		{name: "pin without a file", args: []string{"pin"}, code: exitUsage, want: "needs one FILE"},
		{name: "pin of a line that does not parse", args: []string{"pin", "{digest}"}, setup: listFile("Not/A/Reference!\n"), code: exitUsage, want: `:1: parsing reference "Not/A/Reference!"`},

		// Failures: exit 1.
		{name: "cache dir is a file", args: []string{"ls"}, setup: writeFile, code: exitFail, want: "it is a file, not a directory; point --cache-dir"},
		{name: "cache dir is not a layout", args: []string{"stats"}, setup: notLayout, code: exitFail, want: "not an OCI image layout"},
		{name: "warm into a dir that is not a layout", args: []string{"warm", f.single}, setup: notLayout, code: exitFail, want: "point --cache-dir or OCIBUILD_CACHE_DIR at an empty directory"},
		{name: "blob not in the cache", args: []string{"cat", missing}, code: exitFail, want: "blob not found"},
		{name: "corrupted blob", args: []string{"cat", "{digest}"}, setup: corruptedBlob, code: exitFail, want: "corrupted blob: 21 bytes hash to sha256:"},
		{name: "file to put is missing", args: []string{"put", "/nonexistent/layercache-test"}, code: exitFail, want: "/nonexistent/layercache-test: no such file or directory"},
		{name: "image the registry lacks", args: []string{"warm", f.host + "/test/nope:v1"}, code: exitFail, want: "test/nope:v1"},
		{name: "registry unreachable", args: []string{"warm", f.dead + "/test/base:v1"}, code: exitFail, want: "registry unreachable"},
		{name: "two images failing", args: []string{"warm", f.host + "/test/nope:v1", f.dead + "/test/base:v1"}, code: exitFail, want: "registry unreachable"},
		{name: "platform the index lacks", args: []string{"warm", "--platform", "windows/amd64", f.multi}, code: exitFail, want: "no image for platform windows/amd64"},
		{name: "offline, never warmed", args: []string{"warm", "--offline", f.single}, code: exitFail, want: "warm the image while the registry is reachable"},
		{name: "image list that is not there", args: []string{"warm", "--from", "/nonexistent/images.txt"}, code: exitFail, want: "/nonexistent/images.txt: no such file or directory"},
		{name: "pin of a tag never warmed", args: []string{"pin", "{digest}"}, setup: listFile(f.single + "\n"), code: exitFail, want: ":1: " + f.single + " is not in the cache; warm it first; the file was not changed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "cache")
			var d string
			if tc.setup != nil {
				d = tc.setup(t, dir)
			}
			args := []string{"--cache-dir", dir}
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "{digest}", d))
			}
			code, stdout, stderr := runCLI(t, "", args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			if !strings.HasPrefix(stderr, "layercache: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
				t.Errorf("stderr = %q, want one line starting with %q", stderr, "layercache: ")
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr = %q, want it to contain %q", stderr, tc.want)
			}
		})
	}
}

// TestRunExitReports checks the non-zero exits whose output is a report
// rather than an error line.
func TestRunExitReports(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	t.Run("verify finds a corrupted blob", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "cache")
		d := corruptedBlob(t, dir)
		code, stdout, stderr := runCLI(t, "", "--cache-dir", dir, "verify")
		if code != exitFail {
			t.Errorf("exit %d, want %d", code, exitFail)
		}
		if !strings.Contains(stdout, "corrupted: blob "+d) {
			t.Errorf("stdout = %q, want it to report %s", stdout, d)
		}
		if stderr != "" {
			t.Errorf("stderr = %q, want nothing: the report is the output", stderr)
		}
	})
	t.Run("check of an image never warmed", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "cache")
		code, stdout, stderr := runCLI(t, "", "--cache-dir", dir, "check", f.single)
		if code != exitFail {
			t.Errorf("exit %d, want %d", code, exitFail)
		}
		if want := "missing: " + f.single + ": the tag was never warmed into this cache\n"; !strings.HasPrefix(stdout, want) {
			t.Errorf("stdout = %q, want it to start with %q", stdout, want)
		}
		if stderr != "" {
			t.Errorf("stderr = %q, want nothing: the report is the output", stderr)
		}
	})
	t.Run("check of a warmed image", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "cache")
		mustRun(t, "--cache-dir", dir, "warm", f.single)
		if code, _, stderr := runCLI(t, "", "--cache-dir", dir, "check", f.single); code != exitOK {
			t.Errorf("exit %d, want %d; stderr: %s", code, exitOK, stderr)
		}
	})
	t.Run("verify --repair removes it", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "cache")
		corruptedBlob(t, dir)
		if code, _, stderr := runCLI(t, "", "--cache-dir", dir, "verify", "--repair"); code != exitOK {
			t.Errorf("exit %d, want %d; stderr: %s", code, exitOK, stderr)
		}
	})
}

// listFile returns a setup that writes an image list of text beside the
// cache directory and returns its path.
func listFile(text string) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		path := filepath.Join(filepath.Dir(dir), "images.txt")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
}

// writeFile makes the cache directory a file.
func writeFile(t *testing.T, dir string) string {
	if err := os.WriteFile(dir, []byte("not a directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return ""
}

// notLayout makes the cache directory a directory of other things.
func notLayout(t *testing.T, dir string) string {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return ""
}

// corruptedBlob puts 21 bytes into the cache, flips one in the stored
// blob and returns the blob's digest.
func corruptedBlob(t *testing.T, dir string) string {
	src := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(src, []byte("some bytes to corrupt"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := strings.TrimSpace(mustRun(t, "--cache-dir", dir, "put", src))
	p := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[3] ^= 0xff
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}
