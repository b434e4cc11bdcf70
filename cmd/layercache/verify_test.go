package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A ref of index.json whose manifest is missing is reported by verify
// (exit 1), and dropped by verify --repair (exit 0): a restored cache's
// tags are checked, not only its blobs.
func TestVerify_DanglingRef(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	mustRun(t, "--cache-dir", dir, "warm", f.single)
	d := digest.Digest(f.singleImg.manifest)
	if err := os.Remove(filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "", "--cache-dir", dir, "verify")
	if code != exitFail {
		t.Fatalf("verify with a dangling ref: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitFail, stdout, stderr)
	}
	if !strings.Contains(stdout, "dangling ref: "+f.single+"\n") {
		t.Errorf("verify's output does not name the dangling ref %s:\n%s", f.single, stdout)
	}
	out := mustRun(t, "--cache-dir", dir, "verify", "--repair")
	if !strings.Contains(out, "dropped ref: "+f.single+"\n") {
		t.Errorf("verify --repair's output does not say it dropped %s:\n%s", f.single, out)
	}
	if out := mustRun(t, "--cache-dir", dir, "images", "--json"); out != "[]\n" {
		t.Errorf("refs after verify --repair: %s, want none", out)
	}
	mustRun(t, "--cache-dir", dir, "verify")
}
