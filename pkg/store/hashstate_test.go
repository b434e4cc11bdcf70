package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testhook"
)

// hashStateTestEvery is the interval of the hash-state tests: small, so
// that a few MiB make several saves.
const hashStateTestEvery = 1 << 20

func hashStateCtx(t *testing.T) context.Context {
	return testhook.WithHashStateEvery(t.Context(), hashStateTestEvery)
}

func randomBlob(seed uint64, n int) ([]byte, digest.Digest) {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(b)
	return b, digest.FromBytes(b)
}

func partialFile(s *Store, d digest.Digest) string {
	return s.path.Join(layoutfs.IngestDir, string(d.Algorithm())+"-"+d.Encoded()+".partial")
}

func hashStateFile(s *Store, d digest.Digest) string {
	return s.path.Join(layoutfs.IngestDir, string(d.Algorithm())+"-"+d.Encoded()+".hashstate")
}

// writeAbandoned writes data[:n] through a partial Writer of d in 64 KiB
// writes, and abandons it: with Close (an interrupted download), or
// without (a killed process: only the states saved while writing are on
// disk; the file gets every byte, as the kernel keeps what was written).
func writeAbandoned(t *testing.T, s *Store, d digest.Digest, data []byte, n int, closeIt bool) {
	t.Helper()
	w, err := s.OpenPartial(hashStateCtx(t), d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < n; off += 64 << 10 {
		if _, err := w.Write(data[off:min(off+64<<10, n)]); err != nil {
			t.Fatal(err)
		}
	}
	if closeIt {
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := w.out.wait(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.f.Close() })
}

// resume opens d's partial download again, reads its prefix, writes the
// rest of data and commits. It returns the Writer (to look at what it
// hashed) and Commit's error.
func resume(t *testing.T, s *Store, d digest.Digest, data []byte) (*Writer, error) {
	t.Helper()
	w, err := s.OpenPartial(hashStateCtx(t), d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	got, err := io.ReadAll(w.Prefix())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != w.Resumed() {
		t.Fatalf("Prefix gave %d bytes, want %d", len(got), w.Resumed())
	}
	if _, err := w.Write(data[w.Resumed():]); err != nil {
		t.Fatal(err)
	}
	_, err = w.Commit()
	return w, err
}

func savedOffset(t *testing.T, s *Store, d digest.Digest) int64 {
	t.Helper()
	data, err := os.ReadFile(hashStateFile(s, d))
	if err != nil {
		t.Fatalf("no hash state beside the partial download: %v", err)
	}
	off, _, ok := decodeHashState(d, data)
	if !ok {
		t.Fatalf("hash state %q does not parse", data)
	}
	return off
}

func assertNoPartial(t *testing.T, s *Store, d digest.Digest) {
	t.Helper()
	for _, p := range []string{partialFile(s, d), hashStateFile(s, d)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want it removed", filepath.Base(p), err)
		}
	}
}

// A resume from a saved hash state hashes, before its download goes on,
// only the bytes after the state's offset: none after a Close (which saves
// the state at the end), at most one interval after a kill. The blob is
// committed whole, and the partial file and its state are gone.
func TestOpenPartial_ResumesFromHashState(t *testing.T) {
	data, d := randomBlob(1, 7<<20+123)
	for _, tc := range []struct {
		name    string
		closeIt bool
	}{
		{"closed", true},
		{"killed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestStore(t)
			n := 5<<20 + 4567
			writeAbandoned(t, s, d, data, n, tc.closeIt)
			x := savedOffset(t, s, d)
			switch {
			case tc.closeIt && x != int64(n):
				t.Errorf("state saved at %d after Close, want %d (the end)", x, n)
			case x <= 0 || x > int64(n):
				t.Errorf("state saved at %d, want within the %d bytes written", x, n)
			}
			w, err := resume(t, s, d, data)
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
			if want := int64(n) - x; w.prefixHashed != want {
				t.Errorf("the resume hashed %d bytes of the partial file, want %d (from the saved state on)", w.prefixHashed, want)
			}
			if w.prefixHashed > hashStateTestEvery+pipeChunk*(pipeDepth+1) {
				t.Errorf("the resume hashed %d bytes of the partial file, want at most an interval and the pipe's depth", w.prefixHashed)
			}
			got, err := s.Get(t.Context(), d)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Get: %v, or wrong bytes", err)
			}
			assertNoPartial(t, s, d)
		})
	}
}

// Without a hash state, a resume hashes the whole partial file first, as
// it did before states were saved; once it goes on writing, it saves one.
func TestOpenPartial_NoHashStateHashesPrefix(t *testing.T) {
	data, d := randomBlob(2, 4<<20)
	s, _ := newTestStore(t)
	if err := os.WriteFile(partialFile(s, d), data[:3<<20], 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := resume(t, s, d, data)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if w.prefixHashed != 3<<20 {
		t.Errorf("hashed %d bytes of the partial file, want all %d", w.prefixHashed, 3<<20)
	}
	assertNoPartial(t, s, d)
}

// Bytes of the partial file before the saved state's offset that changed
// on disk (rot, a stale or forged state) fail the check that Commit waits
// for: nothing is published, and the partial file and its state are
// removed, so that the next download starts from zero.
func TestOpenPartial_PrefixChangedBeforeHashState(t *testing.T) {
	data, d := randomBlob(3, 6<<20)
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, s *Store)
	}{
		{"byte flipped before the offset", func(t *testing.T, s *Store) {
			f, err := os.OpenFile(partialFile(s, d), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{data[1000] ^ 0xff}, 1000); err != nil {
				t.Fatal(err)
			}
		}},
		{"forged state: another blob's bytes", func(t *testing.T, s *Store) {
			other, _ := randomBlob(4, 4<<20)
			h := sha256.New()
			h.Write(other[:2<<20])
			state, _ := h.(interface{ MarshalBinary() ([]byte, error) }).MarshalBinary()
			if err := os.WriteFile(hashStateFile(s, d), encodeHashState(d, 2<<20, state), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestStore(t)
			writeAbandoned(t, s, d, data, 4<<20, true)
			tc.damage(t, s)
			w, err := resume(t, s, d, data)
			if !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("Commit: %v, want ErrDigestMismatch", err)
			}
			if w.prefixHashed >= 4<<20 {
				t.Errorf("hashed %d bytes of the partial file: the saved state was not used", w.prefixHashed)
			}
			if _, err := s.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
				t.Errorf("Stat: %v, want ErrNotFound: nothing published", err)
			}
			assertNoPartial(t, s, d)
		})
	}
}

// A hash state that is not one (garbage, too long, of another blob or
// algorithm, past the file's end) or not a regular file (a symlink to a
// good state, a FIFO, a folder) is ignored: the resume hashes the whole
// partial file, never blocks, and commits the blob.
func TestOpenPartial_HostileHashState(t *testing.T) {
	data, d := randomBlob(5, 3<<20)
	goodState := func(t *testing.T, off int64) []byte {
		h := sha256.New()
		h.Write(data[:off])
		state, _ := h.(interface{ MarshalBinary() ([]byte, error) }).MarshalBinary()
		return encodeHashState(d, off, state)
	}
	const n = 2 << 20
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, path string)
	}{
		{"garbage", func(t *testing.T, path string) {
			os.WriteFile(path, []byte("not a hash state\n"), 0o644)
		}},
		{"too long", func(t *testing.T, path string) {
			// A good state padded past the bound: the bound holds
			// whatever follows.
			os.WriteFile(path, append(goodState(t, n), bytes.Repeat([]byte("x"), maxHashStateSize)...), 0o644)
		}},
		{"huge sparse file", func(t *testing.T, path string) {
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			f.Truncate(1 << 40)
			f.Close()
		}},
		{"another blob's", func(t *testing.T, path string) {
			os.WriteFile(path, bytes.Replace(goodState(t, n), []byte(d.Encoded()), []byte(digest.FromString("x").Encoded()), 1), 0o644)
		}},
		{"sha512 state for a sha256 blob", func(t *testing.T, path string) {
			h := digest.SHA512.Hash()
			h.Write(data[:n])
			state, _ := h.(interface{ MarshalBinary() ([]byte, error) }).MarshalBinary()
			os.WriteFile(path, encodeHashState(d, n, state), 0o644)
		}},
		{"offset past the file's end", func(t *testing.T, path string) {
			os.WriteFile(path, goodState(t, n+1), 0o644)
		}},
		{"symlink to a good state", func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "state")
			os.WriteFile(target, goodState(t, n), 0o644)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"FIFO", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"folder", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestStore(t)
			if err := os.WriteFile(partialFile(s, d), data[:n], 0o644); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, hashStateFile(s, d))
			w, err := resume(t, s, d, data)
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
			if w.prefixHashed != n {
				t.Errorf("hashed %d bytes of the partial file, want all %d: the planted state was used", w.prefixHashed, n)
			}
			if got, err := s.Get(t.Context(), d); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Get: %v, or wrong bytes", err)
			}
		})
	}
}

// Restart drops the saved state with the bytes it describes.
func TestWriter_RestartDropsHashState(t *testing.T) {
	data, d := randomBlob(6, 3<<20)
	s, _ := newTestStore(t)
	writeAbandoned(t, s, d, data, 2<<20, true)
	w, err := s.OpenPartial(hashStateCtx(t), d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(hashStateFile(s, d)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("hash state after Restart: %v, want it removed", err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	assertNoPartial(t, s, d)
}

// A folder planted at the hash state's name never stops a download: a
// partial file too long for the blob is restarted, and the blob written
// and committed, with the folder left alone (it is not layercache's).
func TestWriter_RestartWithFolderAtHashState(t *testing.T) {
	data, d := randomBlob(7, 1<<20)
	s, _ := newTestStore(t)
	if err := os.WriteFile(partialFile(s, d), append(bytes.Clone(data), 'x'), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(hashStateFile(s, d), 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := s.OpenPartial(hashStateCtx(t), d, int64(len(data)))
	if err != nil {
		t.Fatalf("OpenPartial: %v", err)
	}
	defer w.Close()
	if w.Resumed() != 0 {
		t.Fatalf("Resumed = %d, want 0: the file was longer than the blob", w.Resumed())
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if fi, err := os.Lstat(hashStateFile(s, d)); err != nil || !fi.IsDir() {
		t.Errorf("the planted folder: %v, want it left alone", err)
	}
}

// SkipChecked moves past the bytes a restored state covers without
// reading them; the check still hashes them, so the blob is committed when
// they are right, and nothing is when they are not.
func TestWriter_SkipChecked(t *testing.T) {
	data, d := randomBlob(8, 3<<20)
	for _, rotten := range []bool{false, true} {
		s, _ := newTestStore(t)
		writeAbandoned(t, s, d, data, 2<<20, true)
		if rotten {
			f, err := os.OpenFile(partialFile(s, d), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte{data[5] ^ 1}, 5)
			f.Close()
		}
		w, err := s.OpenPartial(hashStateCtx(t), d, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if k := w.SkipChecked(); k != 2<<20 {
			t.Fatalf("SkipChecked = %d, want %d (the state saved at Close)", k, 2<<20)
		}
		if n, _ := io.Copy(io.Discard, w.Prefix()); n != 0 {
			t.Errorf("Prefix gave %d bytes after SkipChecked, want 0", n)
		}
		if _, err := w.Write(data[2<<20:]); err != nil {
			t.Fatal(err)
		}
		_, err = w.Commit()
		switch {
		case rotten && !errors.Is(err, ErrDigestMismatch):
			t.Errorf("rotten: Commit: %v, want ErrDigestMismatch", err)
		case !rotten && err != nil:
			t.Errorf("Commit: %v", err)
		}
		if rotten {
			assertNoPartial(t, s, d)
		}
	}
}
