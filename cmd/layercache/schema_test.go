package main

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.keys from the output")

// TestJSONSchema checks the key paths of each command's --json document
// against testdata/golden/<cmd>.keys, one path per line: object keys
// joined by ".", array elements as "[]". The JSON structs are the
// commands' stable schemas; a change to one must show up here, and
// `go test -run TestJSONSchema -update` records it.
//
// Each command runs in states where its arrays have elements and its
// optional fields are set, and the golden file is the union of the runs.
// It is not parallel: the dir case sets the environment and changes the
// working directory.
func TestJSONSchema(t *testing.T) {
	goldenDir, err := filepath.Abs(filepath.Join("testdata", "golden")) // before any t.Chdir
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t)
	type invocation struct {
		args []string // after --cache-dir, unless noCacheDir
		code int
	}
	tests := []struct {
		cmd   string
		setup func(t *testing.T, dir string) // prepares the cache dir
		runs  []invocation
		// dirEnv runs without --cache-dir, with OCIBUILD_CACHE_DIR=dir,
		// and then again with the variable unset in a project.
		dirEnv bool
	}{
		{cmd: "dir", dirEnv: true, runs: []invocation{{args: []string{"dir", "--json"}}}},
		{cmd: "warm", runs: []invocation{
			{args: []string{"warm", "--json", f.single}},
			{args: []string{"warm", "--json", "--all-platforms", f.multi}},
		}},
		{cmd: "images", setup: warmed(f.single, f.multi), runs: []invocation{{args: []string{"images", "--json"}}}},
		{cmd: "check", setup: warmed(f.single, f.multi), runs: []invocation{
			{args: []string{"check", "--json", "--all-platforms", f.single, f.multi}},
			{args: []string{"check", "--json", f.single, f.host + "/test/never:v1"}, code: exitFail},
		}},
		{cmd: "ls", setup: warmed(f.single), runs: []invocation{{args: []string{"ls", "--json"}}}},
		{cmd: "put", runs: []invocation{{args: []string{"put", "--json", "schema_test.go"}}}},
		{cmd: "verify", setup: func(t *testing.T, dir string) {
			warmed(f.single)(t, dir)
			p := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(f.singleImg.manifest, "sha256:"))
			if err := os.WriteFile(p, []byte("{}"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, runs: []invocation{
			{args: []string{"verify", "--json"}, code: exitFail},
			{args: []string{"verify", "--json", "--repair"}},
		}},
		{cmd: "prune", setup: warmed(f.single), runs: []invocation{
			{args: []string{"prune", "--json", "--dry-run", "--max-size", "1"}},
			{args: []string{"prune", "--json", "--max-size", "1"}},
		}},
		{cmd: "stats", setup: warmed(f.single), runs: []invocation{{args: []string{"stats", "--json"}}}},
		{cmd: "clear", setup: warmed(f.single), runs: []invocation{{args: []string{"clear", "--json", "--yes"}}}},
		{cmd: "demo", runs: []invocation{{args: []string{"demo", "--json", "--layers", "1", "--layer-mb", "1"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.cmd, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			keys := map[string]bool{}
			collect := func(global []string, inv invocation) {
				t.Helper()
				args := append(global, inv.args...)
				code, stdout, stderr := runCLI(t, "", args...)
				if code != inv.code {
					t.Fatalf("layercache %s: exit %d, want %d; stderr:\n%s", strings.Join(args, " "), code, inv.code, stderr)
				}
				var doc any
				dec := json.NewDecoder(strings.NewReader(stdout))
				if err := dec.Decode(&doc); err != nil {
					t.Fatalf("layercache %s: stdout is not JSON: %v\n%s", strings.Join(args, " "), err, stdout)
				}
				if dec.More() {
					t.Fatalf("layercache %s: stdout holds more than one JSON document:\n%s", strings.Join(args, " "), stdout)
				}
				keyPaths(doc, "", keys)
			}
			for _, inv := range tc.runs {
				if !tc.dirEnv {
					collect([]string{"--cache-dir", dir}, inv)
					continue
				}
				t.Setenv("OCIBUILD_CACHE_DIR", dir)
				collect(nil, inv)
				proj := t.TempDir()
				if err := os.WriteFile(filepath.Join(proj, "go.mod"), []byte("module example.com/p\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Setenv("OCIBUILD_CACHE_DIR", "")
				t.Chdir(proj)
				collect(nil, inv)
			}
			got := slices.Sorted(func(yield func(string) bool) {
				for k := range keys {
					if !yield(k) {
						return
					}
				}
			})
			golden := filepath.Join(goldenDir, tc.cmd+".keys")
			text := strings.Join(got, "\n") + "\n"
			if *update {
				if err := os.MkdirAll(goldenDir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if text != string(want) {
				t.Errorf("key paths of %s --json changed (run with -update if on purpose)\ngot:\n%swant:\n%s", tc.cmd, text, want)
			}
		})
	}
}

// warmed returns a setup that warms the images (every platform) into dir.
func warmed(refs ...string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		mustRun(t, append([]string{"--cache-dir", dir, "warm", "--all-platforms"}, refs...)...)
	}
}

// keyPaths adds the key paths of v below prefix to keys.
func keyPaths(v any, prefix string, keys map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			keys[p] = true
			keyPaths(child, p, keys)
		}
	case []any:
		p := prefix + "[]"
		for _, child := range v {
			keys[p] = true
			keyPaths(child, p, keys)
		}
	}
}
