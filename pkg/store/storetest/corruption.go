package storetest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

// corruption is one way a blob's file goes bad after it was written.
type corruption struct {
	reason string
	// regular says the bad entry is a regular file, which only hashing
	// tells from a good one (Stat cannot).
	regular bool
	// apply replaces the good blob at path. It returns files outside the
	// blob's name that must survive the removal of the bad entry.
	apply func(t *testing.T, s *store.Store, path string, good []byte) (keep []string)
}

var corruptions = []corruption{
	{"truncated by one byte", true, func(t *testing.T, _ *store.Store, path string, good []byte) []string {
		replaceFile(t, path, good[:len(good)-1])
		return nil
	}},
	{"truncated to half", true, func(t *testing.T, _ *store.Store, path string, good []byte) []string {
		replaceFile(t, path, good[:len(good)/2])
		return nil
	}},
	{"extended by a newline", true, func(t *testing.T, _ *store.Store, path string, good []byte) []string {
		replaceFile(t, path, append(bytes.Clone(good), '\n'))
		return nil
	}},
	{"one bit flipped in the middle", true, func(t *testing.T, _ *store.Store, path string, good []byte) []string {
		b := bytes.Clone(good)
		b[len(b)/2] ^= 0x10
		replaceFile(t, path, b)
		return nil
	}},
	{"last byte changed", true, func(t *testing.T, _ *store.Store, path string, good []byte) []string {
		b := bytes.Clone(good)
		b[len(b)-1]++
		replaceFile(t, path, b)
		return nil
	}},
	{"emptied", true, func(t *testing.T, _ *store.Store, path string, _ []byte) []string {
		replaceFile(t, path, nil)
		return nil
	}},
	{"replaced by an empty directory", false, func(t *testing.T, _ *store.Store, path string, _ []byte) []string {
		removeFile(t, path)
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatal(err)
		}
		return nil
	}},
	{"replaced by a directory with files", false, func(t *testing.T, _ *store.Store, path string, good []byte) []string {
		removeFile(t, path)
		testutil.WriteFile(t, filepath.Join(path, "blob"), string(good))
		return nil
	}},
	{"replaced by a symlink to another blob", false, func(t *testing.T, s *store.Store, path string, _ []byte) []string {
		other := blobPath(t, s, mustPut(t, s, []byte("another blob")))
		symlink(t, other, path)
		return []string{other}
	}},
	{"replaced by a symlink to a file with the right content (symlinks are never followed)", false, func(t *testing.T, _ *store.Store, path string, good []byte) []string {
		target := filepath.Join(t.TempDir(), "copy")
		testutil.WriteFile(t, target, string(good))
		symlink(t, target, path)
		return []string{target}
	}},
	{"replaced by a relative symlink to a copy inside the cache", false, func(t *testing.T, s *store.Store, path string, good []byte) []string {
		target := layout.Path(s.Dir()).Join("copy")
		testutil.WriteFile(t, target, string(good))
		symlink(t, filepath.Join("..", "..", "copy"), path)
		return []string{target}
	}},
	{"replaced by a dangling symlink", false, func(t *testing.T, _ *store.Store, path string, _ []byte) []string {
		symlink(t, filepath.Join(t.TempDir(), "missing"), path)
		return nil
	}},
	{"replaced by a FIFO (must not hang)", false, func(t *testing.T, _ *store.Store, path string, _ []byte) []string {
		removeFile(t, path)
		if err := syscall.Mkfifo(path, 0o644); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
		return nil
	}},
}

func testCorruption(t *testing.T, open func(t *testing.T) *store.Store) {
	good := Blob(80, largeSize)
	d := digest.FromBytes(good)

	// A read that detects the corruption removes the bad entry.
	reads := []struct {
		name string
		// regular is the row's: a regular file of wrong content opens
		// fine, and only the end of the stream tells.
		read func(t *testing.T, s *store.Store, regular bool) error
	}{
		{"Open, small reads", func(t *testing.T, s *store.Store, regular bool) error {
			r, err := s.Open(t.Context(), d)
			if err != nil {
				if regular {
					t.Errorf("Open failed up front (%v); want the error at the end of the stream", err)
				}
				return err
			}
			defer r.Close()
			_, sawEOF, err := readSmall(r)
			if sawEOF {
				t.Error("the Open reader returned io.EOF for a corrupted blob")
			}
			// Once failed, always failed.
			if _, again := r.Read(make([]byte, 10)); err != nil && again == io.EOF {
				t.Error("the Open reader returned io.EOF after reporting corruption")
			}
			return err
		}},
		{"Open, io.Copy", func(t *testing.T, s *store.Store, regular bool) error {
			r, err := s.Open(t.Context(), d)
			if err != nil {
				if regular {
					t.Errorf("Open failed up front (%v); want the error at the end of the stream", err)
				}
				return err
			}
			defer r.Close()
			_, err = io.Copy(io.Discard, r)
			if err == nil {
				t.Error("io.Copy from the Open reader ended in io.EOF for a corrupted blob")
			}
			return err
		}},
		{"Get", func(t *testing.T, s *store.Store, _ bool) error {
			b, err := s.Get(t.Context(), d)
			if b != nil {
				t.Errorf("Get returned %d bytes with %v", len(b), err)
			}
			return err
		}},
		{"OpenVerified", func(t *testing.T, s *store.Store, _ bool) error {
			r, _, err := s.OpenVerified(t.Context(), d)
			if r != nil {
				r.Close()
				t.Error("OpenVerified returned a reader for a corrupted blob")
			}
			return err
		}},
	}

	for _, c := range corruptions {
		t.Run(c.reason, func(t *testing.T) {
			for _, rd := range reads {
				t.Run(rd.name, func(t *testing.T) {
					s := open(t)
					path := blobPath(t, s, mustPut(t, s, good))
					keep := c.apply(t, s, path, good)
					keepSnap := testutil.SnapshotFiles(t, keep)
					var err error
					within(t, 10*time.Second, func() { err = rd.read(t, s, c.regular) })
					if !errors.Is(err, store.ErrCorrupted) {
						t.Errorf("got %v, want ErrCorrupted", err)
					}
					if testutil.Exists(t, path) {
						t.Error("the bad entry is still at the blob's name")
					}
					if diff := keepSnap.Diff(testutil.SnapshotFiles(t, keep)); diff != "" {
						t.Errorf("removing the bad entry touched other files:\n%s", diff)
					}
					// The store heals: the blob can be stored again.
					if err := s.PutVerified(t.Context(), d, int64(len(good)), bytes.NewReader(good)); err != nil {
						t.Fatalf("PutVerified after the removal: %v", err)
					}
					if _, err := s.Stat(t.Context(), d, store.VerifyFirst); err != nil {
						t.Errorf("Verify after the blob was stored again: %v", err)
					}
				})
			}

			t.Run("Verify reports and leaves it", func(t *testing.T) {
				s := open(t)
				path := blobPath(t, s, mustPut(t, s, good))
				c.apply(t, s, path, good)
				before := testutil.Snapshot(t, s.Dir())
				var err error
				within(t, 10*time.Second, func() { _, err = s.Stat(t.Context(), d, store.VerifyFirst) })
				if !errors.Is(err, store.ErrCorrupted) {
					t.Errorf("Verify: got %v, want ErrCorrupted", err)
				}
				testutil.AssertUnchanged(t, s.Dir(), before)
			})

			t.Run("Stat", func(t *testing.T) {
				s := open(t)
				path := blobPath(t, s, mustPut(t, s, good))
				c.apply(t, s, path, good)
				before := testutil.Snapshot(t, s.Dir())
				var err error
				within(t, 10*time.Second, func() { _, err = s.Stat(t.Context(), d) })
				switch {
				case c.regular && err != nil:
					t.Errorf("Stat of a regular file: got %v, want nil (Stat does not hash)", err)
				case !c.regular && !errors.Is(err, store.ErrCorrupted):
					t.Errorf("Stat of a non-regular entry: got %v, want ErrCorrupted", err)
				}
				testutil.AssertUnchanged(t, s.Dir(), before)
			})
		})
	}
}
