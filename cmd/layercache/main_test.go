package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain makes the test binary act as the layercache command when it is
// run under that name, which is how the scripts' `exec layercache` runs
// the real main: flag parsing, exit codes and all.
func TestMain(m *testing.M) {
	// The warm command reads Docker credentials. The scripts point
	// DOCKER_CONFIG at their own empty home; the Go tests of this
	// process must not read the machine's either.
	if os.Getenv("DOCKER_CONFIG") == "" {
		os.Setenv("DOCKER_CONFIG", filepath.Join(os.TempDir(), "layercache-test-no-docker-config"))
	}
	testscript.Main(m, map[string]func(){
		"layercache": main,
	})
}

// TestScripts runs testdata/script/*.txtar. Each script gets its own HOME
// and OCIBUILD_CACHE_DIR=$WORK/cache, and shares one in-process registry
// whose images are named by the variables of fixture.env.
func TestScripts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join("testdata", "script"),
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		Setup: func(e *testscript.Env) error {
			home := filepath.Join(e.WorkDir, "home")
			if err := os.MkdirAll(home, 0o755); err != nil {
				return err
			}
			e.Setenv("HOME", home)
			e.Setenv("DOCKER_CONFIG", filepath.Join(home, ".docker"))
			e.Setenv("OCIBUILD_CACHE_DIR", filepath.Join(e.WorkDir, "cache"))
			// A -race binary sleeps a second at exit by default
			// (atexit_sleep_ms), which, per exec, would make the
			// scripts take minutes.
			if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
				e.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
			}
			for k, v := range f.env() {
				e.Setenv(k, v)
			}
			e.Values[registriesKey{}] = map[string]func(){}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"blob":     cmdBlob,
			"corrupt":  cmdCorrupt,
			"setmtime": cmdSetmtime,
			"truncate": cmdTruncate,
			"sha256":   cmdSHA256,
			"calc":     cmdCalc,
			"json":     cmdJSON,
			"lines":    cmdLines,
			"chtimes":  cmdChtimes,
			"mkfifo":   cmdMkfifo,
			"registry": f.cmdRegistry,
			"expand":   cmdExpand,
		},
	})
}

// registriesKey holds, in a script's Values, the stop funcs of the
// registries it started, by variable name.
type registriesKey struct{}

// cmdRegistry: registry start VAR serves the fixture's images from a
// registry of the script's own, and sets VAR to its host:port; registry
// stop VAR stops it, so that the script can show what works without it.
func (f *fixture) cmdRegistry(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: registry start|stop VAR")
	}
	stops := ts.Value(registriesKey{}).(map[string]func())
	switch args[0] {
	case "start":
		host, stop, shutdown, err := f.startRegistry()
		ts.Check(err)
		ts.Defer(shutdown)
		stops[args[1]] = stop
		ts.Setenv(args[1], host)
	case "stop":
		stop, ok := stops[args[1]]
		if !ok {
			ts.Fatalf("registry stop %s: no registry started as %s", args[1], args[1])
		}
		stop()
	default:
		ts.Fatalf("usage: registry start|stop VAR")
	}
}

// cmdExpand: expand FILE... replaces $VAR and ${VAR} in each file with the
// script's variables, so that an image list in the archive can name the
// fixture's registry, whose port changes from run to run.
func cmdExpand(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: expand FILE...")
	}
	for _, f := range args {
		ts.Check(os.WriteFile(ts.MkAbs(f), []byte(os.Expand(ts.ReadFile(f), ts.Getenv)), 0o644))
	}
}

// blobPath is where the cache of the script keeps blob d.
func blobPath(ts *testscript.TestScript, d string) string {
	dg, err := digest.Parse(d)
	if err != nil {
		ts.Fatalf("%q: %v", d, err)
	}
	return filepath.Join(ts.Getenv("OCIBUILD_CACHE_DIR"), "blobs", dg.Algorithm().String(), dg.Encoded())
}

// cmdBlob: blob DIGEST... asserts that each blob is in the cache of
// $OCIBUILD_CACHE_DIR (with !, that none is).
func cmdBlob(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) == 0 {
		ts.Fatalf("usage: [!] blob DIGEST...")
	}
	for _, d := range args {
		_, err := os.Stat(blobPath(ts, d))
		switch {
		case neg && err == nil:
			ts.Fatalf("blob %s is in the cache", d)
		case !neg && err != nil:
			ts.Fatalf("blob %s is not in the cache: %v", d, err)
		}
	}
}

// cmdCorrupt: corrupt DIGEST flips the bits of one byte in the middle of
// the blob's file, keeping its size, as a bad disk would.
func cmdCorrupt(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: corrupt DIGEST")
	}
	path := blobPath(ts, args[0])
	b, err := os.ReadFile(path)
	ts.Check(err)
	if len(b) == 0 {
		ts.Fatalf("blob %s is empty", args[0])
	}
	b[len(b)/2] ^= 0xff
	fi, err := os.Stat(path)
	ts.Check(err)
	// Blob files are read-only for some stores; write anyway, keep mtime.
	ts.Check(os.Chmod(path, 0o644))
	ts.Check(os.WriteFile(path, b, 0o644))
	ts.Check(os.Chmod(path, fi.Mode().Perm()))
	ts.Check(os.Chtimes(path, fi.ModTime(), fi.ModTime()))
}

// cmdSetmtime: setmtime AGE DIGEST... sets the blobs' last use (their
// mtime) to AGE ago, with AGE a Go duration or a number of days such as
// 40d. This is how scripts age blobs without sleeping.
func cmdSetmtime(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: setmtime AGE DIGEST...")
	}
	age, err := parseAge(args[0])
	ts.Check(err)
	t := time.Now().Add(-age)
	for _, d := range args[1:] {
		ts.Check(os.Chtimes(blobPath(ts, d), t, t))
	}
}

// cmdTruncate: truncate SIZE DIGEST... makes each blob's file SIZE bytes
// long (SIZE as --max-size takes it, such as 1TiB), keeping its mtime. A
// file made longer is sparse, so a huge one costs no disk.
func cmdTruncate(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: truncate SIZE DIGEST...")
	}
	size, err := parseSize(args[0])
	ts.Check(err)
	for _, d := range args[1:] {
		path := blobPath(ts, d)
		fi, err := os.Stat(path)
		ts.Check(err)
		ts.Check(os.Chmod(path, 0o644))
		ts.Check(os.Truncate(path, size))
		ts.Check(os.Chmod(path, fi.Mode().Perm()))
		ts.Check(os.Chtimes(path, fi.ModTime(), fi.ModTime()))
	}
}

// cmdSHA256: sha256 VAR FILE sets VAR to the digest (sha256:<hex>) of
// FILE, and VAR_HEX to its hex part, computed here rather than by the
// command under test.
func cmdSHA256(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: sha256 VAR FILE")
	}
	sum := sha256.Sum256([]byte(ts.ReadFile(args[1])))
	ts.Setenv(args[0], "sha256:"+hex.EncodeToString(sum[:]))
	ts.Setenv(args[0]+"_HEX", hex.EncodeToString(sum[:]))
}

// cmdCalc: calc VAR N [+|- N]... sets VAR to the integer result.
func cmdCalc(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args)%2 != 0 {
		ts.Fatalf("usage: calc VAR N [+|- N]...")
	}
	num := func(s string) int64 {
		n, err := strconv.ParseInt(s, 10, 64)
		ts.Check(err)
		return n
	}
	v := num(args[1])
	for i := 2; i < len(args); i += 2 {
		switch args[i] {
		case "+":
			v += num(args[i+1])
		case "-":
			v -= num(args[i+1])
		default:
			ts.Fatalf("calc: unknown operator %q", args[i])
		}
	}
	ts.Setenv(args[0], strconv.FormatInt(v, 10))
}

// cmdLines: lines FILE N checks that FILE (or stdout, stderr) holds
// exactly N lines, each ended by a newline. "lines stderr 1" is the CLI's
// promise for errors: one line, never a stack trace.
func cmdLines(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: lines FILE N")
	}
	want, err := strconv.Atoi(args[1])
	ts.Check(err)
	text := ts.ReadFile(args[0])
	got := strings.Count(text, "\n")
	if text != "" && !strings.HasSuffix(text, "\n") {
		ts.Fatalf("%s: last line has no newline", args[0])
	}
	if got != want {
		ts.Fatalf("%s has %d lines, want %d", args[0], got, want)
	}
}

// cmdJSON: json FILE PATH [WANT] checks one value of the JSON document in
// FILE (stdout and stderr name the last command's output). PATH is
// dot-separated object keys and array indexes, "." being the document.
// Without WANT the value must exist (with !, it must not). WANT is
// compared with a string as it is and with anything else as its JSON
// text; "#N" wants an array or object of N entries, ">N" a number above N.
func cmdJSON(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: [!] json FILE PATH [WANT]")
	}
	var doc any
	if err := json.Unmarshal([]byte(ts.ReadFile(args[0])), &doc); err != nil {
		ts.Fatalf("%s is not one JSON document: %v", args[0], err)
	}
	v, ok := jsonLookup(doc, args[1])
	if len(args) == 2 {
		if ok == neg {
			ts.Fatalf("json %s %s: found=%v", args[0], args[1], ok)
		}
		return
	}
	if !ok {
		ts.Fatalf("json %s: no %s", args[0], args[1])
	}
	want := args[2]
	var match bool
	var got string
	if s, isStr := v.(string); isStr {
		got = s
	} else {
		b, _ := json.Marshal(v)
		got = string(b)
	}
	switch {
	case strings.HasPrefix(want, "#"):
		n, err := strconv.Atoi(want[1:])
		ts.Check(err)
		switch v := v.(type) {
		case []any:
			match = len(v) == n
		case map[string]any:
			match = len(v) == n
		}
	case strings.HasPrefix(want, ">"):
		n, err := strconv.ParseFloat(want[1:], 64)
		ts.Check(err)
		f, isNum := v.(float64)
		match = isNum && f > n
	default:
		match = got == want
	}
	if match == neg {
		ts.Fatalf("json %s %s: got %s, want %s%s", args[0], args[1], got, map[bool]string{true: "not "}[neg], want)
	}
}

func jsonLookup(v any, path string) (any, bool) {
	if path == "." {
		return v, true
	}
	for _, k := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[k]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(x) {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// runCLI runs the command in this process, as main does, with stdin as
// its standard input, and returns its exit code and output.
func runCLI(t testing.TB, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut strings.Builder
	code = run(t.Context(), args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// mustRun runs the command and fails the test unless it exits 0.
func mustRun(t testing.TB, args ...string) string {
	t.Helper()
	code, stdout, stderr := runCLI(t, "", args...)
	if code != exitOK {
		t.Fatalf("layercache %s: exit %d, stderr:\n%s", strings.Join(args, " "), code, stderr)
	}
	return stdout
}
