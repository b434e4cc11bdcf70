package layoutfs_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
)

// Regression tests of what the torture suite's hostile inputs found: a
// symlink planted in a layout made it act on files outside it, and a FIFO
// at index.json hung every open.

// hostileOutside returns a directory outside the layout holding an old file,
// and a func that fails t if anything in it changed.
func hostileOutside(t *testing.T) (string, func()) {
	t.Helper()
	dir := t.TempDir()
	old := filepath.Join(dir, "precious.tmp")
	if err := os.WriteFile(old, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	return dir, func() {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != "precious.tmp" {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("the directory outside the layout holds %q, want only precious.tmp", names)
		}
	}
}

func hostileSymlink(t *testing.T, target, path string) {
	t.Helper()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// Create replaces a symlink at blobs/, blobs/<alg> or ingest/ with a real
// directory, without touching what it pointed at.
func TestCreate_ReplacesSymlinkedDirs(t *testing.T) {
	for _, rel := range []string{layoutfs.BlobsDir, filepath.Join(layoutfs.BlobsDir, "sha256"), filepath.Join(layoutfs.BlobsDir, "sha512"), layoutfs.IngestDir} {
		t.Run(rel, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := layoutfs.Create(dir); err != nil {
				t.Fatal(err)
			}
			outside, unchanged := hostileOutside(t)
			hostileSymlink(t, outside, filepath.Join(dir, rel))
			p, err := layoutfs.Create(dir)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			if fi, err := os.Lstat(filepath.Join(dir, rel)); err == nil && !fi.IsDir() {
				t.Errorf("%s is still a %v after Create", rel, fi.Mode().Type())
			}
			if _, err := p.Sweep(t.Context(), time.Now()); err != nil {
				t.Errorf("Sweep: %v", err)
			}
			unchanged()
		})
	}
}

// A symlink planted at ingest/ after Create: temp files, locks and sweeps
// refuse it rather than act in the directory it points at.
func TestIngest_SymlinkedAfterCreate(t *testing.T) {
	dir := t.TempDir()
	p, err := layoutfs.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	outside, unchanged := hostileOutside(t)
	hostileSymlink(t, outside, p.Join(layoutfs.IngestDir))
	if f, err := p.CreateTemp("blob-*"); err == nil {
		f.Close()
		t.Error("CreateTemp through a symlinked ingest/ succeeded")
	} else if !errors.Is(err, layoutfs.ErrNotLayout) {
		t.Errorf("CreateTemp: got %v, want ErrNotLayout", err)
	}
	if l, err := p.LockIndex(t.Context()); err == nil {
		l.Unlock()
		t.Error("LockIndex through a symlinked ingest/ succeeded")
	}
	if n, err := p.Sweep(t.Context(), time.Now()); err == nil || n != 0 {
		t.Errorf("Sweep through a symlinked ingest/: got (%d, %v), want an error", n, err)
	}
	unchanged()
}

// A symlink planted at a lock file's name is not followed: the lock
// creates no file outside, and works.
func TestLock_SymlinkedLockFile(t *testing.T) {
	p, err := layoutfs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	outside, unchanged := hostileOutside(t)
	d := digest.FromString("x")
	for _, name := range []string{"index.json.lock", "sha256-" + d.Encoded() + ".lock", layoutfs.StatsFile + ".lock"} {
		hostileSymlink(t, filepath.Join(outside, "created-"+name), p.Join(layoutfs.IngestDir, name))
	}
	if err := p.UpdateIndex(t.Context(), func(*ocispec.Index) error { return nil }); err != nil {
		t.Errorf("UpdateIndex: %v", err)
	}
	if l, err := p.LockBlob(t.Context(), d); err != nil {
		t.Errorf("LockBlob: %v", err)
	} else {
		l.Unlock()
	}
	if err := p.UpdateStats(t.Context(), func([]byte) ([]byte, error) { return []byte("{}"), nil }); err != nil {
		t.Errorf("UpdateStats: %v", err)
	}
	unchanged()
}

// index.json, the stats file and oci-layout are never read through a
// symlink, and a FIFO at index.json does not hang a reader.
func TestLayoutFiles_NotFollowed(t *testing.T) {
	outside := t.TempDir()
	idx := `{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"` + digest.FromString("x").String() + `","size":1,"annotations":{"org.opencontainers.image.ref.name":"evil"}}]}`
	for name, content := range map[string]string{"index.json": idx, "stats": `{"hits":999}`, "oci-layout": `{"imageLayoutVersion":"1.0.0"}`} {
		if err := os.WriteFile(filepath.Join(outside, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := layoutfs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hostileSymlink(t, filepath.Join(outside, "index.json"), p.Join(layoutfs.IndexFile))
	if _, err := p.ReadIndex(); !errors.Is(err, layoutfs.ErrBadIndex) {
		t.Errorf("ReadIndex of a symlinked index.json: got %v, want ErrBadIndex", err)
	}
	hostileSymlink(t, filepath.Join(outside, "stats"), p.Join(layoutfs.StatsFile))
	if b, err := p.ReadStats(); err != nil || b != nil {
		t.Errorf("ReadStats of a symlinked stats file: got (%q, %v), want none", b, err)
	}
	hostileSymlink(t, filepath.Join(outside, "oci-layout"), p.Join(layoutfs.LayoutFile))
	if _, err := layoutfs.Create(string(p)); !errors.Is(err, layoutfs.ErrNotLayout) {
		t.Errorf("Create with a symlinked oci-layout: got %v, want ErrNotLayout", err)
	}

	q, err := layoutfs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(q.Join(layoutfs.IndexFile))
	if err := syscall.Mkfifo(q.Join(layoutfs.IndexFile), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := q.ReadIndex(); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, layoutfs.ErrBadIndex) {
			t.Errorf("ReadIndex of a FIFO: got %v, want ErrBadIndex", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadIndex of a FIFO at index.json hangs")
	}
}

// RepairIndex keeps a bad index.json aside and lists what the blobs hold:
// the image manifests and indexes no stored index lists.
func TestRepairIndex(t *testing.T) {
	p, err := layoutfs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	put := func(content string) digest.Digest {
		d := digest.FromString(content)
		path, _ := p.BlobPath(d)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o444); err != nil {
			t.Fatal(err)
		}
		return d
	}
	cfg := put(`{"os":"linux"}`)
	manifest := func(n int) string {
		return `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"` +
			cfg.String() + `","size":14},"layers":[],"annotations":{"n":"` + strings.Repeat("x", n) + `"}}`
	}
	child := put(manifest(1))
	standalone := put(manifest(2))
	index := put(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + child.String() + `","size":1}]}`)
	// A blob whose bytes do not match its name is no image.
	liar := digest.FromString("something else")
	path, _ := p.BlobPath(liar)
	if err := os.WriteFile(path, []byte(manifest(3)), 0o444); err != nil {
		t.Fatal(err)
	}

	// A valid index.json is left alone.
	if rebuilt, _, err := p.RepairIndex(context.Background()); err != nil || rebuilt {
		t.Fatalf("RepairIndex of a valid index: got (%v, %v)", rebuilt, err)
	}
	if err := os.WriteFile(p.Join(layoutfs.IndexFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	rebuilt, n, err := p.RepairIndex(context.Background())
	if err != nil || !rebuilt || n != 2 {
		t.Fatalf("RepairIndex: got (%v, %d, %v), want (true, 2, nil)", rebuilt, n, err)
	}
	idx, err := p.ReadIndex()
	if err != nil {
		t.Fatal(err)
	}
	got := map[digest.Digest]string{}
	for _, m := range idx.Manifests {
		got[m.Digest] = m.MediaType
	}
	if len(got) != 2 || got[index] != ocispec.MediaTypeImageIndex || got[standalone] != ocispec.MediaTypeImageManifest {
		t.Errorf("rebuilt index lists %v, want the index %s and the manifest %s", got, index, standalone)
	}
	if b, err := os.ReadFile(p.Join(layoutfs.CorruptIndexFile)); err != nil || string(b) != "garbage" {
		t.Errorf("%s: got (%q, %v), want the bad file", layoutfs.CorruptIndexFile, b, err)
	}
}
