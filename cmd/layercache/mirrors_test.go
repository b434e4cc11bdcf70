package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// badHostsDir writes a hosts directory beside the cache directory dir,
// whose docker.io/hosts.toml names an unknown capability, and returns it.
func badHostsDir(t *testing.T, dir string) string {
	hosts := filepath.Join(filepath.Dir(dir), "hosts")
	if err := os.MkdirAll(filepath.Join(hosts, "docker.io"), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := "[host.\"https://mirror.example\"]\n  capabilities = [\"pull\", \"fetch\"]\n"
	if err := os.WriteFile(filepath.Join(hosts, "docker.io", "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return hosts
}

// TestMirrorsEnv_ExitCodes checks LAYERCACHE_MIRRORS as TestRunExitCodes
// checks flags: a malformed one is a usage error (exit 2) of one line
// naming the variable, and it is not read at all when --mirror is given.
// The command runs in this process, which reads the variable from the
// process's environment: so this test sets it (t.Setenv) and is not
// parallel; the parallel tests of the package wait until it is done.
func TestMirrorsEnv_ExitCodes(t *testing.T) {
	f := newFixture(t)
	t.Setenv(mirrorsEnv, "docker.io=http://mirror.example, not-a-mirror")

	cache := filepath.Join(t.TempDir(), "cache")
	code, stdout, stderr := runCLI(t, "", "--cache-dir", cache, "warm", f.single)
	if code != exitUsage {
		t.Errorf("exit %d, want %d", code, exitUsage)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	want := `layercache: ` + mirrorsEnv + `: mirror "not-a-mirror": want REGISTRY=URL` + "\n"
	if stderr != want {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}

	// With --mirror, the variable is not read: the warm goes on. The
	// mirror is the registry itself, so the warm succeeds whether the
	// pull asks it or not.
	code, stdout, stderr = runCLI(t, "", "--cache-dir", cache, "warm", "--mirror", f.host+"=http://"+f.host, f.single)
	if code != exitOK {
		t.Errorf("with --mirror: exit %d, want %d; stderr: %s", code, exitOK, stderr)
	}
	if !strings.HasPrefix(stdout, strings.TrimSuffix(f.single, ":v1")+"@sha256:") {
		t.Errorf("with --mirror: stdout = %q, want the image's summary", stdout)
	}

	// The counters split the warm's fetches by host: the manifest by tag
	// came from the upstream (the mirror may not resolve tags), all the
	// rest from the mirror, which answered first.
	var st statsJSON
	if err := json.Unmarshal([]byte(mustRun(t, "--cache-dir", cache, "--json", "stats")), &st); err != nil {
		t.Fatal(err)
	}
	mirror, up := st.Counters.Hosts["http://"+f.host], st.Counters.Hosts[f.host]
	if len(st.Counters.Hosts) != 2 || up.Blobs != 1 || mirror.Blobs+up.Blobs != st.Counters.Misses ||
		mirror.Bytes+up.Bytes != st.Counters.MissBytes {
		t.Errorf("stats: counters %+v, want the tag's manifest from %s and the other misses from the mirror http://%s", st.Counters, f.host, f.host)
	}
	if out := mustRun(t, "--cache-dir", cache, "stats"); !strings.Contains(out, "from http://"+f.host+": ") {
		t.Errorf("stats: %q does not name the mirror", out)
	}
}
