package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestDemoGoRun runs the quick start as the README has users run it,
// `go run ./cmd/layercache demo --json`, in a fresh cache: the cold run
// must fetch from the in-process registry and the warm run nothing.
func TestDemoGoRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the command with go run; skipped with -short")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no go command to run the demo with, and CI=true: %v", err)
		}
		t.Skipf("no go command to run the demo with: %v", err)
	}
	t.Parallel()
	cache := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "run", ".", "demo", "--json")
	cmd.Env = append(os.Environ(), "OCIBUILD_CACHE_DIR="+cache)
	var stderr []byte
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	if err != nil {
		t.Fatalf("go run . demo --json: %v\nstderr:\n%s", err, stderr)
	}
	var got demoJSON
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decoding the demo's JSON: %v\n%s", err, out)
	}
	if got.CacheDir != cache {
		t.Errorf("cacheDir = %q, want %q (from OCIBUILD_CACHE_DIR)", got.CacheDir, cache)
	}
	if got.Cold.FetchedBytes <= 0 || got.Cold.FetchedBlobs <= 0 {
		t.Errorf("cold run fetched %d bytes in %d blobs, want some", got.Cold.FetchedBytes, got.Cold.FetchedBlobs)
	}
	if got.Warm.FetchedBytes != 0 || got.Warm.FetchedBlobs != 0 {
		t.Errorf("warm run fetched %d bytes in %d blobs, want 0", got.Warm.FetchedBytes, got.Warm.FetchedBlobs)
	}
	if got.Warm.CachedBytes != got.Bytes {
		t.Errorf("warm run read %d bytes from the cache, want the image's %d", got.Warm.CachedBytes, got.Bytes)
	}
	for _, r := range []struct {
		label string
		run   demoRun
	}{{"cold", got.Cold}, {"warm", got.Warm}} {
		if sum := r.run.FetchedBytes + r.run.CachedBytes; sum != got.Bytes {
			t.Errorf("%s run: fetched %d + cached %d = %d bytes, want the image's %d", r.label, r.run.FetchedBytes, r.run.CachedBytes, sum, got.Bytes)
		}
	}
	if got.Kept {
		t.Errorf("kept = true without --keep")
	}
	// Without --keep, the demo leaves the cache as it found it.
	if out := mustRun(t, "--cache-dir", cache, "ls", "--json"); out != "[]\n" {
		t.Errorf("cache after the demo: %s, want no blobs", out)
	}
	if out := mustRun(t, "--cache-dir", cache, "images", "--json"); out != "[]\n" {
		t.Errorf("refs after the demo: %s, want none", out)
	}
}
