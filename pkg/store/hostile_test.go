package store_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/pkg/store"
)

// Regression tests of hostile caches: what the torture suite
// (integration/torture) and issue 12 found.

// A symlink planted at blobs/<alg> or blobs/ while a store is open makes
// no operation read, write or remove a file outside the cache.
func TestSymlinkedBlobDirsAfterOpen(t *testing.T) {
	for _, rel := range []string{filepath.Join(layoutfs.BlobsDir, "sha256"), layoutfs.BlobsDir} {
		t.Run(rel, func(t *testing.T) {
			ctx := context.Background()
			s, err := store.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			data := []byte("a blob the outside directory holds too")
			d, err := s.Put(ctx, bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			outside := t.TempDir()
			target := outside
			if rel == layoutfs.BlobsDir {
				target = filepath.Join(outside, "sha256")
			}
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(target, d.Encoded()), data, 0o644); err != nil {
				t.Fatal(err)
			}
			before := hostileTree(t, outside)
			link := layoutfs.Path(s.Dir()).Join(rel)
			if err := os.RemoveAll(link); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, link); err != nil {
				t.Fatal(err)
			}

			if _, err := s.Put(ctx, strings.NewReader("new")); err == nil {
				t.Error("Put through a symlinked blob directory succeeded")
			}
			if b, err := s.Get(ctx, d); err == nil {
				t.Errorf("Get through a symlinked blob directory served %q", b)
			}
			if _, err := s.Stat(ctx, d); err == nil {
				t.Error("Stat through a symlinked blob directory succeeded")
			}
			if err := s.Delete(ctx, d); err == nil {
				t.Error("Delete through a symlinked blob directory succeeded")
			}
			n := 0
			if err := s.Walk(ctx, func(store.Info) error { n++; return nil }); err != nil || n != 0 {
				t.Errorf("Walk: got %d blobs, %v; want none", n, err)
			}
			if _, err := s.Prune(ctx, store.Policy{MaxSize: 1}); err != nil {
				t.Errorf("Prune: %v", err)
			}
			if err := s.Clear(ctx); err != nil {
				t.Errorf("Clear: %v", err)
			}
			if after := hostileTree(t, outside); after != before {
				t.Errorf("outside the cache: got\n%s\nwant\n%s", after, before)
			}
			// Clear removed the link; the store works again.
			if got, err := s.Put(ctx, bytes.NewReader(data)); err != nil || got != d {
				t.Errorf("Put after Clear: got (%s, %v)", got, err)
			}
			if fi, err := os.Lstat(link); err != nil || !fi.IsDir() {
				t.Errorf("%s after Clear and Put: %v, %v; want a directory", rel, fi, err)
			}
		})
	}
}

func hostileTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		content := ""
		if fi.Mode().IsRegular() {
			c, _ := os.ReadFile(path)
			content = string(c)
		}
		rel, _ := filepath.Rel(dir, path)
		b.WriteString(rel + " " + fi.Mode().String() + " " + content + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Open rebuilds an index.json that is not valid from the blobs, keeps the
// bad file, and says so.
func TestOpen_RepairsBadIndex(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := s.Put(context.Background(), strings.NewReader(`{"os":"linux"}`))
	if err != nil {
		t.Fatal(err)
	}
	m := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"` + cfg.String() + `","size":14},"layers":[]}`
	md, err := s.Put(context.Background(), strings.NewReader(m))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(layoutfs.Path(s.Dir()).Join(layoutfs.IndexFile), []byte(`{"schemaVersion":2,"manifests":[`), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	s, err = store.Open(dir, store.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatalf("Open with a bad index.json: %v", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), layoutfs.CorruptIndexFile) {
		t.Errorf("Open did not warn about the bad index.json: %q", logs.String())
	}
	idx, err := layoutfs.Path(s.Dir()).ReadIndex()
	if err != nil {
		t.Fatalf("index.json after Open: %v", err)
	}
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != md {
		t.Errorf("rebuilt index.json lists %+v, want the stored manifest %s", idx.Manifests, md)
	}
	if err := s.Tag(context.Background(), "example.com/a:1", idx.Manifests[0]); err != nil {
		t.Errorf("Tag after the rebuild: %v", err)
	}
}

// A write that does not fit fails with an error that says "disk full",
// whatever the errno: here EFBIG from a file size limit, which reads "file
// too large" on its own. The limit is set in a child process.
func TestPut_DiskFull(t *testing.T) {
	if dir := os.Getenv("LAYERCACHE_DISKFULL_CHILD"); dir != "" {
		hostileDiskFullChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestPut_DiskFull$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LAYERCACHE_DISKFULL_CHILD="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func hostileDiskFullChild(t *testing.T, dir string) {
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	signal.Ignore(syscall.SIGXFSZ)
	lim := uint64(64 << 10)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: lim, Max: lim}); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	data := bytes.Repeat([]byte("x"), 1<<20)
	_, err = s.Put(context.Background(), bytes.NewReader(data))
	if err == nil || !errors.Is(err, syscall.EFBIG) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Put over the file size limit: got %v, want EFBIG and the words disk full", err)
	}
	if !errors.Is(err, store.ErrNoSpace) {
		t.Errorf("Put over the file size limit: got %v, want ErrNoSpace", err)
	}
	if _, err := s.Stat(context.Background(), digest.FromBytes(data)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stat after the failed Put: got %v, want ErrNotFound", err)
	}
	entries, _ := os.ReadDir(layoutfs.Path(s.Dir()).Join(layoutfs.IngestDir))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("the failed Put left ingest/%s", e.Name())
		}
	}
}

// Get and Inspect refuse a file larger than MaxBlobInMemory at a blob's
// name with ErrTooLarge, naming digest and path, without allocating for it
// or reading it, and leave it in place (it may be a whole layer). The
// 8 GiB file is sparse: making it costs nothing, and reading it into
// memory would crash the process.
func TestGet_OversizedBlobNotRead(t *testing.T) {
	for _, size := range []int64{store.MaxBlobInMemory + 1, 8 << 30} {
		t.Run(strconv.FormatInt(size, 10), func(t *testing.T) {
			ctx := context.Background()
			s := mustOpen(t, t.TempDir())
			d := mustPut(t, s, []byte(`{"schemaVersion":2}`))
			path, err := layoutfs.Path(s.Dir()).BlobPath(d)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, size); err != nil {
				t.Skipf("cannot make a sparse file of %d bytes here: %v", size, err)
			}
			for _, read := range []struct {
				name string
				opts []store.ReadOption
			}{{"Get", nil}, {"Inspect", []store.ReadOption{store.Inspect}}} {
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				b, err := s.Get(ctx, d, read.opts...)
				runtime.ReadMemStats(&after)
				if !errors.Is(err, store.ErrTooLarge) || b != nil {
					t.Errorf("%s of a %d-byte blob: got (%d bytes, %v), want ErrTooLarge", read.name, size, len(b), err)
				} else if msg := err.Error(); !strings.Contains(msg, d.String()) || !strings.Contains(msg, path) {
					t.Errorf("%s: error %q does not name the digest and the path", read.name, msg)
				}
				// Far less than the blob: nothing was allocated for it.
				if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
					t.Errorf("%s of a %d-byte blob allocated %d bytes", read.name, size, n)
				}
				if fi, err := os.Stat(path); err != nil || fi.Size() != size {
					t.Errorf("after %s: the blob is gone or changed: %v, %v", read.name, fi, err)
				}
			}
		})
	}
}

// Clear removes the blobs before it rewrites index.json, so that on a full
// disk, where the rewrite fails, it still frees the space and reports the
// failure. The disk is full for the child process by a file size limit of
// one byte (RLIMIT_FSIZE), which makes the rewrite fail with EFBIG.
func TestClear_RemovesBlobsWhenIndexCannotBeWritten(t *testing.T) {
	if dir := os.Getenv("LAYERCACHE_CLEARFULL_CHILD"); dir != "" {
		hostileClearFullChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestClear_RemovesBlobsWhenIndexCannotBeWritten$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LAYERCACHE_CLEARFULL_CHILD="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func hostileClearFullChild(t *testing.T, dir string) {
	ctx := context.Background()
	s := mustOpen(t, dir)
	m := mustPut(t, s, []byte(`{"schemaVersion":2}`))
	mustPut(t, s, []byte("a layer"))
	if err := s.Tag(ctx, "example.com/a:1", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: m, Size: 19}); err != nil {
		t.Fatal(err)
	}
	signal.Ignore(syscall.SIGXFSZ)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: 1, Max: 1}); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	err := s.Clear(ctx)
	if !errors.Is(err, syscall.EFBIG) {
		t.Errorf("Clear with index.json not writable: got %v, want EFBIG", err)
	}
	n := 0
	if err := s.Walk(ctx, func(store.Info) error { n++; return nil }); err != nil || n != 0 {
		t.Errorf("after Clear: %d blobs left (%v), want none", n, err)
	}
}
