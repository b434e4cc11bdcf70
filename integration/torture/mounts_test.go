package torture_test

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/integration/torture"
)

// privateMounts runs a child in a mount namespace of its own, so that the
// mounts it makes (a tmpfs, a read-only bind mount) vanish with it. Go
// makes the child's mounts private to it before exec.
var privateMounts = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}

// TestFullDisk puts a cache on a 1 MiB tmpfs, and again under a 1 MiB
// RLIMIT_FSIZE (what the helper falls back to where the machine does not
// allow mounts): a Put that does not fit fails with an error that says the
// disk is full, leaves nothing at a final name and no temp file, and a
// pull-through still returns the image from the registry.
func TestFullDisk(t *testing.T) {
	w := newWorld(t, []int64{300 << 10, 1200 << 10})
	var all torture.Result
	var details []string
	for _, mode := range []struct {
		name string
		attr *syscall.SysProcAttr
		args []string
	}{
		{"tmpfs", privateMounts, nil},
		{"rlimit", nil, []string{"-no-mount"}},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		args := append([]string{"fulldisk", "-dir", t.TempDir(), "-kib", "1024",
			"-put-size", fmt.Sprint(2 << 20), "-image", w.images[0].spec()}, mode.args...)
		r := runHelper(ctx, t, "", mode.attr, args...)
		cancel()
		if r.err != nil && mode.attr != nil {
			// Some sandboxes refuse a new mount namespace; the
			// rlimit run still covers the scenario.
			t.Logf("%s: no private mount namespace here: %v", mode.name, r.err)
			details = append(details, fmt.Sprintf("%s: skipped, no private mount namespace: %v", mode.name, r.err))
			continue
		}
		if r.err != nil || r.killed {
			t.Fatalf("fulldisk (%s): %v (killed: %v)", mode.name, r.err, r.killed)
		}
		for _, v := range r.res.Violations {
			t.Errorf("full disk (%s): %s", mode.name, v)
		}
		all.Add(r.res)
		details = append(details, fmt.Sprintf("%s: %s; operations: %s; errors: %s",
			mode.name, r.res.Mode, torture.Counts(r.res.Ops), torture.Counts(r.res.Errors)))
		for _, n := range r.res.Notes {
			details = append(details, "  "+n)
		}
	}
	report.add(t, row{
		scenario: "3. full disk",
		ops:      all.TotalOps(), faults: fmt.Sprintf("%d disk-full errors", all.Faults),
		violations: len(all.Violations), details: details,
	})
}

// TestReadOnlyCache pulls from a cache on a read-only bind mount (the
// tests run as root, for whom permission bits do not make a directory
// read-only): every hit is served from the cache, every miss comes from
// the registry, with one warning and no error, and nothing in the
// directory changes.
func TestReadOnlyCache(t *testing.T) {
	w := newWorld(t, []int64{200 << 10, 100 << 10}, []int64{150 << 10})
	hit, miss := w.images[0], w.images[1]
	dir := filepath.Join(t.TempDir(), "cache")
	warm(t, dir, hit)
	before := snapshot(t, dir)
	w.proxy.Reset()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	r := runHelper(ctx, t, "", privateMounts, "readonly", "-dir", dir, "-hit", hit.spec(), "-miss", miss.spec())
	skip := r.res.Skipped
	if r.err != nil {
		skip = fmt.Sprintf("no private mount namespace here: %v", r.err)
	}
	if skip != "" {
		report.add(t, row{scenario: "4. read-only cache", faults: "skipped", details: []string{"skipped: " + skip}})
		t.Skipf("this machine forbids the read-only bind mount: %s", skip)
	}
	var violations []string
	violations = append(violations, r.res.Violations...)
	// Hits: nothing fetched for the cached image. Misses: each blob of
	// the other fetched once, its manifest by digest included, and its
	// first layer twice, as the helper reads it compressed and then
	// uncompressed and a read-only cache keeps nothing in between.
	st := w.proxy.Stats()
	want := regtest.Stats{BlobGets: int64(len(miss.blobs)), BlobBytes: miss.bytes + miss.layers[0], ManifestGets: 1}
	if st.BlobGets != want.BlobGets || st.BlobBytes != want.BlobBytes || st.ManifestGets != want.ManifestGets {
		violations = append(violations, fmt.Sprintf("registry served %d blobs (%d bytes) and %d manifests; want %d (%d bytes) and %d: every hit from the cache, every miss from the registry",
			st.BlobGets, st.BlobBytes, st.ManifestGets, want.BlobGets, want.BlobBytes, want.ManifestGets))
	}
	if d := diffSnapshots(before, snapshot(t, dir)); d != "" {
		violations = append(violations, "the read-only cache changed: "+d)
	}
	for _, v := range violations {
		t.Errorf("read-only cache: %s", v)
	}
	report.add(t, row{
		scenario: "4. read-only cache",
		ops:      r.res.TotalOps(), faults: fmt.Sprintf("%d warning(s), 0 errors", r.res.Faults),
		violations: len(violations),
		details: []string{
			"mount: " + r.res.Mode,
			fmt.Sprintf("registry: %d blob GETs (%d bytes), %d manifest GETs, all for the image not cached", st.BlobGets, st.BlobBytes, st.ManifestGets),
		},
	})
}
