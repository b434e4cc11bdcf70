package layoutfs_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/fsutil"
	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
)

// Tests of the rule "layercache never blocks on a special file": a FIFO,
// a socket, a directory or a symlink where layercache expects one of its
// files (a lock file, a layout file) is replaced or reported, never opened
// in a way that waits for a writer. A restored CI cache (a tar) can carry
// a FIFO anywhere.

// hangLimit bounds each call that must not block. A call that returns
// passes however long it took; one that is still blocked after hangLimit
// fails the test instead of hanging it.
const hangLimit = 20 * time.Second

// notBlocked runs fn and returns its error, or fails t if fn has not
// returned within hangLimit.
func notBlocked(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(hangLimit):
		t.Fatalf("%s blocks: still running after %v", what, hangLimit)
		return nil
	}
}

// mkfifo makes a named pipe at path. When the test ends, it opens the pipe
// for writing if it is still there, which releases a reader blocked on it.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
}

// mksocket makes a Unix socket at path, whose open(2) fails with ENXIO.
// The socket is bound at a short relative name and moved, since a
// socket's address is limited to about 100 bytes.
func mksocket(t *testing.T, path string) {
	t.Helper()
	dir, err := os.MkdirTemp(filepath.Dir(path), "s")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	t.Chdir(dir)
	l, err := net.Listen("unix", "s")
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if err := os.Rename(filepath.Join(dir, "s"), path); err != nil {
		t.Fatal(err)
	}
}

// lockUsers are the ways layercache takes each of its locks.
func lockUsers(p layoutfs.Path) []struct {
	name string
	lock string // the lock file's name in ingest/
	use  func(ctx context.Context) error
} {
	return []struct {
		name string
		lock string
		use  func(ctx context.Context) error
	}{
		{"UpdateIndex", layoutfs.IndexFile + ".lock", func(ctx context.Context) error {
			return p.UpdateIndex(ctx, func(idx *ocispec.Index) error {
				idx.Manifests = append(idx.Manifests, refDesc("example.com/app:v1"))
				return nil
			})
		}},
		{"LockBlob", lockName(digestA), func(ctx context.Context) error {
			l, err := p.LockBlob(ctx, digestA)
			if err == nil {
				err = l.Unlock()
			}
			return err
		}},
		{"UpdateStats", layoutfs.StatsFile + ".lock", func(ctx context.Context) error {
			return p.UpdateStats(ctx, func([]byte) ([]byte, error) { return []byte(`{"hits":1}`), nil })
		}},
	}
}

// TestLock_FIFOAtLockFile: a FIFO (or a socket, or an empty directory) at
// a lock file's name is replaced by a regular lock file, and the lock
// works, with a context that has a deadline as with one that has none.
func TestLock_FIFOAtLockFile(t *testing.T) {
	plants := []struct {
		name  string
		plant func(t *testing.T, path string)
	}{
		{"a FIFO", mkfifo},
		{"a socket", mksocket},
		{"an empty directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, pl := range plants {
		for i, u := range lockUsers(layoutfs.Path("")) {
			t.Run(pl.name+"/"+u.name, func(t *testing.T) {
				p := newLayout(t)
				u := lockUsers(p)[i]
				path := p.Join(layoutfs.IngestDir, u.lock)
				pl.plant(t, path)
				ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
				defer cancel()
				if err := notBlocked(t, u.name, func() error { return u.use(ctx) }); err != nil {
					t.Fatalf("%s with %s at %s: %v", u.name, pl.name, u.lock, err)
				}
				if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
					t.Errorf("%s after %s: got (%v, %v), want a regular lock file", u.lock, u.name, fi, err)
				}
				if err := notBlocked(t, u.name+" again", func() error { return u.use(t.Context()) }); err != nil {
					t.Errorf("%s again: %v", u.name, err)
				}
			})
		}
	}
}

// TestLock_FolderOfFilesAtLockFile: a directory holding files at a lock
// file's name is not emptied: the lock fails with an error that names the
// path, and changes nothing.
func TestLock_FolderOfFilesAtLockFile(t *testing.T) {
	for i, u := range lockUsers(layoutfs.Path("")) {
		t.Run(u.name, func(t *testing.T) {
			p := newLayout(t)
			u := lockUsers(p)[i]
			path := p.Join(layoutfs.IngestDir, u.lock)
			testutil.WriteFile(t, filepath.Join(path, "mine.txt"), "mine")
			before := testutil.Snapshot(t, path)
			err := notBlocked(t, u.name, func() error { return u.use(t.Context()) })
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("%s with a folder of files at %s: got %v, want an error naming %s", u.name, u.lock, err, path)
			}
			testutil.AssertUnchanged(t, path, before)
		})
	}
}

// TestLock_FIFOReplacedOnceUnderContention: goroutines that all find a
// FIFO at the index lock's name replace it once between them, so they all
// end up locking the same file: every ref each of them adds is kept.
func TestLock_FIFOReplacedOnceUnderContention(t *testing.T) {
	const writers = 6
	for round := range 10 {
		p := newLayout(t)
		mkfifo(t, p.Join(layoutfs.IngestDir, layoutfs.IndexFile+".lock"))
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, writers)
		for i := range writers {
			wg.Go(func() {
				<-start
				errs <- p.UpdateIndex(t.Context(), func(idx *ocispec.Index) error {
					idx.Manifests = append(idx.Manifests, refDesc(fmt.Sprintf("writer-%d", i)))
					return nil
				})
			})
		}
		err := notBlocked(t, "UpdateIndex by goroutines", func() error {
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if got := refNames(t, p); len(got) != writers {
			t.Fatalf("round %d: index.json holds %q, want %d refs: two writers held the index lock at once", round, got, writers)
		}
	}
}

// TestLayoutFiles_SpecialFiles: a FIFO at oci-layout, index.json, the
// stats file, ingest/ or blobs/<alg> blocks nothing. oci-layout makes the
// directory no layout; the others are replaced or set aside.
func TestLayoutFiles_SpecialFiles(t *testing.T) {
	t.Run("oci-layout", func(t *testing.T) {
		p := newLayout(t)
		rmAll(t, p.Join(layoutfs.LayoutFile))
		mkfifo(t, p.Join(layoutfs.LayoutFile))
		err := notBlocked(t, "Create", func() error { _, err := layoutfs.Create(p.String()); return err })
		if !errors.Is(err, layoutfs.ErrNotLayout) {
			t.Errorf("Create with a FIFO at oci-layout: got %v, want ErrNotLayout", err)
		}
	})
	t.Run("index.json", func(t *testing.T) {
		p := newLayout(t)
		rmAll(t, p.Join(layoutfs.IndexFile))
		mkfifo(t, p.Join(layoutfs.IndexFile))
		if err := notBlocked(t, "UpdateIndex", func() error {
			return p.UpdateIndex(t.Context(), func(*ocispec.Index) error { return nil })
		}); err != nil {
			t.Errorf("UpdateIndex with a FIFO at index.json: %v", err)
		}
		if _, err := p.ReadIndex(); err != nil {
			t.Errorf("ReadIndex after UpdateIndex: %v", err)
		}
	})
	t.Run("stats file", func(t *testing.T) {
		p := newLayout(t)
		mkfifo(t, p.Join(layoutfs.StatsFile))
		if err := notBlocked(t, "UpdateStats", func() error {
			return p.UpdateStats(t.Context(), func(old []byte) ([]byte, error) {
				if old != nil {
					return nil, fmt.Errorf("old contents %q, want none", old)
				}
				return []byte("{}"), nil
			})
		}); err != nil {
			t.Errorf("UpdateStats with a FIFO at the stats file: %v", err)
		}
	})
	for _, rel := range []string{layoutfs.IngestDir, filepath.Join(layoutfs.BlobsDir, "sha256")} {
		t.Run(rel, func(t *testing.T) {
			p := newLayout(t)
			rmAll(t, p.Join(rel))
			mkfifo(t, p.Join(rel))
			if err := notBlocked(t, "Create", func() error { _, err := layoutfs.Create(p.String()); return err }); err != nil {
				t.Fatalf("Create with a FIFO at %s: %v", rel, err)
			}
			assertLayout(t, p)
		})
	}
}

// TestSweep_SpecialFiles: Sweep never opens a FIFO in ingest/: one at a
// temp file's name is removed like any old temp file, one at a lock
// file's name is left for the lock to replace, and one at another name is
// not layercache's.
func TestSweep_SpecialFiles(t *testing.T) {
	p := newLayout(t)
	names := map[string]bool{ // name -> removed
		"blob-1.tmp":                 true,
		lockName(digestA):            false,
		layoutfs.IndexFile + ".lock": false,
		"someone-else's.fifo":        false,
	}
	for name := range names {
		mkfifo(t, p.Join(layoutfs.IngestDir, name))
		setAge(t, p.Join(layoutfs.IngestDir, name), 48*time.Hour)
	}
	if err := notBlocked(t, "Sweep", func() error {
		_, err := p.Sweep(t.Context(), time.Now().Add(-time.Hour))
		return err
	}); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	for name, removed := range names {
		if got := !testutil.Exists(t, p.Join(layoutfs.IngestDir, name)); got != removed {
			t.Errorf("%s: removed = %v, want %v", name, got, removed)
		}
	}
}

// TestSyncDir_FIFO: SyncDir of something that is not a directory fails
// rather than waiting for a writer.
func TestSyncDir_FIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	mkfifo(t, path)
	if err := notBlocked(t, "SyncDir", func() error { return fsutil.SyncDir(path) }); err == nil {
		t.Error("SyncDir of a FIFO: got nil, want an error")
	}
}
