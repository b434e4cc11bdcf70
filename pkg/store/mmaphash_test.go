package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"
)

// OpenVerified hashes blobs of mmapMin bytes and more through memory maps
// (across windows for the large one); each corruption must still be
// caught before the first byte, and whole blobs served intact.
func TestOpenVerified_Mapped(t *testing.T) {
	sizes := []int{mmapMin, 3*mmapMin + 17}
	if !testing.Short() {
		sizes = append(sizes, mmapWindow+mmapMin+5) // crosses a window
	}
	for _, size := range sizes {
		data := make([]byte, size)
		rng := rand.New(rand.NewPCG(uint64(size), 1))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		d := digest.FromBytes(data)
		tests := []struct {
			name    string
			corrupt func(path string) error
		}{
			// The blob as written: served whole.
			{"intact", nil},
			// One bit flipped in the last byte.
			{"bit-flipped", func(p string) error { return flipAt(p, int64(size-1)) }},
			// Cut short: the hash covers fewer bytes.
			{"truncated", func(p string) error { return os.Truncate(p, int64(size/2)) }},
			// Grown: the size from fstat covers the extra byte.
			{"extended", func(p string) error {
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = f.Write([]byte{0})
				return err
			}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				ctx := context.Background()
				s, err := Open(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				if err := s.PutVerified(ctx, d, int64(size), bytes.NewReader(data)); err != nil {
					t.Fatal(err)
				}
				path, _ := s.path.BlobPath(d)
				if tc.corrupt != nil {
					os.Chmod(path, 0o644)
					if err := tc.corrupt(path); err != nil {
						t.Fatal(err)
					}
				}
				rc, _, err := s.OpenVerified(ctx, d)
				if tc.corrupt != nil {
					if !errors.Is(err, ErrCorrupted) {
						t.Fatalf("OpenVerified of a %s blob of %d bytes: %v, want ErrCorrupted", tc.name, size, err)
					}
					if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("corrupted blob still at %s", path)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				defer rc.Close()
				got, err := io.ReadAll(rc)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("read %d bytes (err %v), want the %d bytes put", len(got), err, size)
				}
			})
		}
	}
}

func flipAt(path string, off int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	b[0] ^= 1
	_, err = f.WriteAt(b, off)
	return err
}
