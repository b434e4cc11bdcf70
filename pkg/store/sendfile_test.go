package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/pkg/store"
)

// The reader of Open with VerifyFirst seeks within the verified blob, and
// its WriteTo gives the same bytes to any writer: one with ReadFrom (a
// file, which copies in the kernel; a bytes.Buffer) or one without.
func TestOpenVerifyFirst_SeekAndWriteTo(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, 3<<20+4321)
	rand.New(rand.NewSource(11)).Read(data)
	s := mustOpen(t, t.TempDir())
	d := mustPut(t, s, data)
	size := int64(len(data))

	writers := []struct {
		name string
		make func(t *testing.T) (io.Writer, func() []byte)
	}{
		{"file (ReadFrom: copy_file_range)", func(t *testing.T) (io.Writer, func() []byte) {
			path := filepath.Join(t.TempDir(), "out")
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f, func() []byte { b, _ := os.ReadFile(path); return b }
		}},
		{"bytes.Buffer (ReadFrom)", func(*testing.T) (io.Writer, func() []byte) {
			var b bytes.Buffer
			return &b, b.Bytes
		}},
		{"io.Discard (large reads, not its own)", func(*testing.T) (io.Writer, func() []byte) {
			return io.Discard, nil
		}},
		{"plain writer", func(*testing.T) (io.Writer, func() []byte) {
			var b bytes.Buffer
			return struct{ io.Writer }{&b}, b.Bytes
		}},
	}
	tests := []struct {
		name string
		// seek runs before WriteTo on a reader that has served a small
		// read (so that it holds buffered bytes), and returns where the
		// rest starts.
		seek func(t *testing.T, rs io.ReadSeeker) int64
	}{
		// No seek: the buffered rest, then the file.
		{"after a small read", func(t *testing.T, rs io.ReadSeeker) int64 { return 100 }},
		{"seek to the start", seekTo(0, io.SeekStart, 0, size)},
		{"seek into the middle", seekTo(size/2+1, io.SeekStart, size/2+1, size)},
		{"seek from current", seekTo(1000, io.SeekCurrent, 1100, size)},
		{"seek from the end", seekTo(-10, io.SeekEnd, size-10, size)},
		{"seek to the end", seekTo(0, io.SeekEnd, size, size)},
		// An offset past the end is kept, and reads nothing.
		{"seek past the end", seekTo(size+5, io.SeekStart, size+5, size)},
	}
	for _, w := range writers {
		for _, tc := range tests {
			t.Run(w.name+"/"+tc.name, func(t *testing.T) {
				rc, err := s.Open(ctx, d, store.VerifyFirst)
				if err != nil {
					t.Fatal(err)
				}
				defer rc.Close()
				rs, ok := rc.(io.ReadSeeker)
				if !ok {
					t.Fatalf("the VerifyFirst reader %T has no Seek", rc)
				}
				head := make([]byte, 100)
				if _, err := io.ReadFull(rc, head); err != nil || !bytes.Equal(head, data[:100]) {
					t.Fatalf("first 100 bytes: %v", err)
				}
				from := tc.seek(t, rs)
				dst, got := w.make(t)
				n, err := rc.(io.WriterTo).WriteTo(dst)
				if err != nil || n != size-from {
					t.Fatalf("WriteTo: %d bytes, %v; want %d, nil", n, err, size-from)
				}
				if got != nil && !bytes.Equal(got(), data[from:]) {
					t.Errorf("WriteTo wrote other bytes than the blob's from %d", from)
				}
				if n, err := rc.Read(make([]byte, 10)); n != 0 || err != io.EOF {
					t.Errorf("Read after WriteTo: %d, %v; want 0, io.EOF", n, err)
				}
			})
		}
	}
	t.Run("bad seeks", func(t *testing.T) {
		rc, err := s.Open(ctx, d, store.VerifyFirst)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		rs := rc.(io.ReadSeeker)
		if _, err := rs.Seek(-1, io.SeekStart); err == nil {
			t.Error("Seek to -1 succeeded")
		}
		if _, err := rs.Seek(0, 7); err == nil {
			t.Error("Seek with whence 7 succeeded")
		}
	})
}

// seekTo seeks as told, checks that the new offset is want, and returns
// where the rest of a blob of size bytes starts.
func seekTo(offset int64, whence int, want, size int64) func(*testing.T, io.ReadSeeker) int64 {
	return func(t *testing.T, rs io.ReadSeeker) int64 {
		t.Helper()
		got, err := rs.Seek(offset, whence)
		if err != nil || got != want {
			t.Fatalf("Seek(%d, %d) = %d, %v; want %d", offset, whence, got, err, want)
		}
		return min(got, size)
	}
}

// A file that shrinks after it was hashed ends the kernel copy of WriteTo
// with ErrCorrupted, as it ends a read.
func TestOpenVerifyFirst_WriteToShrunkFile(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(12)).Read(data)
	s := mustOpen(t, t.TempDir())
	d := mustPut(t, s, data)
	rc, err := s.Open(ctx, d, store.VerifyFirst)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	path, err := layoutfs.Path(s.Dir()).BlobPath(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(len(data)/2)); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := io.Copy(f, rc); !errors.Is(err, store.ErrCorrupted) || n != int64(len(data)/2) {
		t.Errorf("io.Copy of a shrunk blob: %d bytes, %v; want %d, ErrCorrupted", n, err, len(data)/2)
	}
}
