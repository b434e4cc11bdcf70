// Package storetest is the conformance suite of package store: the contract
// of a Store that holds whatever its options, checked from outside through
// the exported API and the files of its directory.
//
// pkg/store runs it on the default store and on WithDurable(); the
// integration module runs it on stores in its own settings. It is modelled
// on containerd's content testsuite (ContentSuite).
package storetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

// Run runs the suite. open must return a new, empty store in a directory
// of its own (t.TempDir()) each time it is called; Run calls it at least
// once per subtest and never closes or removes what it returns.
func Run(t *testing.T, open func(t *testing.T) *store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func(t *testing.T) *store.Store)
	}{
		{"Put", testPut},
		{"Put_Twice", testPutTwice},
		{"Put_ReaderError", testPutReaderError},
		{"PutVerified", testPutVerified},
		{"PutVerified_AlreadyStored", testPutVerifiedAlreadyStored},
		{"Writer", testWriter},
		{"Open", testOpen},
		{"OpenVerified", testOpenVerified},
		{"NotFound", testNotFound},
		{"Stat", testStat},
		{"Delete", testDelete},
		{"Delete_WhileReading", testDeleteWhileReading},
		{"ChangedWhileReading", testChangedWhileReading},
		{"Walk", testWalk},
		{"Clear", testClear},
		{"Verify", testVerify},
		{"LastUsed", testLastUsed},
		{"Corruption", testCorruption},
		{"InvalidDigest", testInvalidDigest},
		{"CancelledContext", testCancelledContext},
		{"Concurrent", testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// Blob returns n bytes of deterministic pseudo-random data, different for
// each seed.
func Blob(seed uint64, n int) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// largeSize crosses the store's read buffer and its read-ahead threshold,
// so that reads and writes take several rounds and a partial last one.
const largeSize = 1<<20 + 1<<19 + 3

func mustPut(t *testing.T, s *store.Store, data []byte) digest.Digest {
	t.Helper()
	d, err := s.Put(t.Context(), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if want := digest.FromBytes(data); d != want {
		t.Fatalf("Put: got %s, want %s", d, want)
	}
	return d
}

func blobPath(t *testing.T, s *store.Store, d digest.Digest) string {
	t.Helper()
	p, err := s.Layout().BlobPath(d)
	if err != nil {
		t.Fatalf("BlobPath(%s): %v", d, err)
	}
	return p
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// assertBlob checks that the store serves d as want through Get, Open and
// OpenVerified, and that the file at its final name is whole.
func assertBlob(t *testing.T, s *store.Store, d digest.Digest, want []byte) {
	t.Helper()
	ctx := t.Context()
	got, err := s.Get(ctx, d)
	if err != nil {
		t.Fatalf("Get(%s): %v", d, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Get(%s): got %d bytes, want %d (content differs)", d, len(got), len(want))
	}
	r, err := s.Open(ctx, d)
	if err != nil {
		t.Fatalf("Open(%s): %v", d, err)
	}
	got, err = io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("Open(%s) read: got %d bytes, %v; want %d bytes, nil", d, len(got), err, len(want))
	}
	r, info, err := s.OpenVerified(ctx, d)
	if err != nil {
		t.Fatalf("OpenVerified(%s): %v", d, err)
	}
	got, err = io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("OpenVerified(%s) read: got %d bytes, %v; want %d bytes, nil", d, len(got), err, len(want))
	}
	if info.Digest != d || info.Size != int64(len(want)) {
		t.Errorf("OpenVerified(%s) info: got %+v, want digest %s size %d", d, info, d, len(want))
	}
	b, err := os.ReadFile(blobPath(t, s, d))
	if err != nil || !bytes.Equal(b, want) {
		t.Errorf("file of %s: got %d bytes, %v; want %d bytes", d, len(b), err, len(want))
	}
}

// assertIngestClean fails if ingest/ holds a temporary file: a write that
// failed or was abandoned must remove its own. Lock files may stay.
func assertIngestClean(t *testing.T, s *store.Store) {
	t.Helper()
	entries, err := os.ReadDir(s.Layout().Join(layout.IngestDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("ingest/ holds %s after the write ended", e.Name())
		}
	}
}

// assertNoBlob fails if a file is at the final name of d.
func assertNoBlob(t *testing.T, s *store.Store, d digest.Digest) {
	t.Helper()
	if exists(t, blobPath(t, s, d)) {
		t.Errorf("a file is at the final name of %s", d)
	}
}

func testPut(t *testing.T, open func(t *testing.T) *store.Store) {
	tests := []struct {
		size   int
		reason string
	}{
		{0, "empty blob"},
		{1, "one byte"},
		{4096, "small, like a manifest"},
		{largeSize, "larger than the copy buffer"},
	}
	s := open(t)
	for i, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			data := Blob(uint64(i), tc.size)
			d := mustPut(t, s, data)
			assertBlob(t, s, d, data)
			fi, err := os.Lstat(blobPath(t, s, d))
			if err != nil {
				t.Fatal(err)
			}
			if !fi.Mode().IsRegular() {
				t.Errorf("blob file mode: got %v, want a regular file", fi.Mode())
			}
			if fi.Mode().Perm()&0o222 != 0 {
				t.Errorf("blob file mode: got %v, want read-only (blobs are immutable)", fi.Mode())
			}
			assertIngestClean(t, s)
		})
	}
}

func testPutTwice(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	data := Blob(1, 1000)
	d1 := mustPut(t, s, data)
	d2, err := s.Put(t.Context(), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("second Put of the same bytes: %v", err)
	}
	if d2 != d1 {
		t.Errorf("second Put: got %s, want %s", d2, d1)
	}
	if err := s.PutVerified(t.Context(), d1, -1, bytes.NewReader(data)); err != nil {
		t.Errorf("PutVerified of stored bytes: %v", err)
	}
	assertBlob(t, s, d1, data)
	assertIngestClean(t, s)
}

// failingReader returns n bytes of data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func testPutReaderError(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	data := Blob(2, largeSize)
	errRead := errors.New("connection reset")
	before := snapshotBlobs(t, s)
	d, err := s.Put(t.Context(), &failingReader{data: data[:len(data)/2], err: errRead})
	if !errors.Is(err, errRead) {
		t.Errorf("Put: got (%s, %v), want %v", d, err, errRead)
	}
	err = s.PutVerified(t.Context(), digest.FromBytes(data), int64(len(data)), &failingReader{data: data[:len(data)/2], err: errRead})
	if !errors.Is(err, errRead) {
		t.Errorf("PutVerified: got %v, want %v", err, errRead)
	}
	assertNoBlob(t, s, digest.FromBytes(data))
	assertNoBlob(t, s, digest.FromBytes(data[:len(data)/2]))
	if d := before.diff(snapshotBlobs(t, s)); d != "" {
		t.Errorf("blobs/ changed by a failed Put:\n%s", d)
	}
	assertIngestClean(t, s)
}

func testPutVerified(t *testing.T, open func(t *testing.T) *store.Store) {
	data := Blob(3, largeSize)
	other := Blob(4, largeSize)
	sha256 := digest.FromBytes(data)
	sha512 := digest.SHA512.FromBytes(data)
	flipped := bytes.Clone(data)
	flipped[len(flipped)/2] ^= 0x80
	n := int64(len(data))
	tests := []struct {
		digest   digest.Digest
		size     int64
		data     []byte
		mismatch bool
		reason   string
	}{
		{sha256, n, data, false, "sha256, size known"},
		{sha256, -1, data, false, "sha256, size unknown"},
		{sha512, n, data, false, "sha512"},
		{sha256, n, other, true, "wrong bytes of the right size"},
		{sha256, -1, other, true, "wrong bytes, size unknown"},
		{sha256, n, flipped, true, "one bit flipped"},
		{sha256, n, data[:n-1], true, "data one byte short"},
		{sha256, -1, data[:n-1], true, "data one byte short, size unknown"},
		{sha256, n, append(bytes.Clone(data), 0), true, "data one byte long"},
		{sha256, n - 1, data, true, "size one byte short of the data"},
		{sha256, n + 1, data, true, "size one byte longer than the data"},
		{sha256, 0, data, true, "size zero"},
		{sha512, n, other, true, "sha512, wrong bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			s := open(t)
			err := s.PutVerified(t.Context(), tc.digest, tc.size, bytes.NewReader(tc.data))
			if !tc.mismatch {
				if err != nil {
					t.Fatalf("PutVerified: %v", err)
				}
				assertBlob(t, s, tc.digest, data)
				assertIngestClean(t, s)
				return
			}
			if !errors.Is(err, store.ErrDigestMismatch) {
				t.Errorf("PutVerified: got %v, want ErrDigestMismatch", err)
			}
			assertNoBlob(t, s, tc.digest)
			assertNoBlob(t, s, digest.FromBytes(tc.data))
			if _, err := s.Stat(t.Context(), tc.digest); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Stat after a mismatch: got %v, want ErrNotFound", err)
			}
			assertIngestClean(t, s)
		})
	}
}

// unreadable fails the test if PutVerified reads it.
type unreadable struct{ t *testing.T }

func (r unreadable) Read([]byte) (int, error) {
	r.t.Error("PutVerified read its reader for a blob already stored")
	return 0, io.EOF
}

func testPutVerifiedAlreadyStored(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	data := Blob(5, 100)
	d := mustPut(t, s, data)
	if err := s.PutVerified(t.Context(), d, int64(len(data)), unreadable{t}); err != nil {
		t.Errorf("PutVerified of a stored blob: %v", err)
	}
	assertBlob(t, s, d, data)
}

func testWriter(t *testing.T, open func(t *testing.T) *store.Store) {
	ctx := t.Context()
	data := Blob(6, largeSize)
	want := digest.FromBytes(data)

	t.Run("computed digest, written in parts", func(t *testing.T) {
		s := open(t)
		w, err := s.NewWriter(ctx, "", -1)
		if err != nil {
			t.Fatal(err)
		}
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 100_000)
			if m, err := w.Write(rest[:n]); err != nil || m != n {
				t.Fatalf("Write: got (%d, %v), want (%d, nil)", m, err, n)
			}
			rest = rest[n:]
		}
		if w.Size() != int64(len(data)) || w.Digest() != want {
			t.Errorf("before Commit: got size %d digest %s, want %d %s", w.Size(), w.Digest(), len(data), want)
		}
		got, err := w.Commit()
		if err != nil || got != want {
			t.Fatalf("Commit: got (%s, %v), want (%s, nil)", got, err, want)
		}
		assertBlob(t, s, want, data)
		if _, err := w.Commit(); err == nil {
			t.Error("second Commit: got nil, want an error")
		}
		if _, err := w.Write([]byte("x")); err == nil {
			t.Error("Write after Commit: got nil, want an error")
		}
		if err := w.Close(); err != nil {
			t.Errorf("Close after Commit: %v", err)
		}
		assertBlob(t, s, want, data)
		assertIngestClean(t, s)
	})

	t.Run("Close abandons the blob", func(t *testing.T) {
		s := open(t)
		w, err := s.NewWriter(ctx, want, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := w.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := w.Commit(); err == nil {
			t.Error("Commit after Close: got nil, want an error")
		}
		assertNoBlob(t, s, want)
		assertIngestClean(t, s)
	})

	t.Run("writing past the expected size fails at once", func(t *testing.T) {
		s := open(t)
		w, err := s.NewWriter(ctx, want, 10)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.Write(data[:10]); err != nil {
			t.Fatalf("Write of the expected size: %v", err)
		}
		if _, err := w.Write(data[10:11]); !errors.Is(err, store.ErrDigestMismatch) {
			t.Errorf("Write past the size: got %v, want ErrDigestMismatch", err)
		}
		if _, err := w.Commit(); !errors.Is(err, store.ErrDigestMismatch) {
			t.Errorf("Commit after a failed Write: got %v, want ErrDigestMismatch", err)
		}
		assertNoBlob(t, s, want)
		assertIngestClean(t, s)
	})

	t.Run("expected sha512", func(t *testing.T) {
		s := open(t)
		d := digest.SHA512.FromBytes(data)
		w, err := s.NewWriter(ctx, d, -1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if got, err := w.Commit(); err != nil || got != d {
			t.Fatalf("Commit: got (%s, %v), want (%s, nil)", got, err, d)
		}
		assertBlob(t, s, d, data)
	})

	t.Run("context cancelled before Commit", func(t *testing.T) {
		s := open(t)
		ctx, cancel := context.WithCancel(t.Context())
		w, err := s.NewWriter(ctx, "", -1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := w.Commit(); !errors.Is(err, context.Canceled) {
			t.Errorf("Commit: got %v, want context.Canceled", err)
		}
		assertNoBlob(t, s, want)
		assertIngestClean(t, s)
	})
}

// readSmall reads r to the end with small reads and reports whether any
// Read returned io.EOF, and the first other error.
func readSmall(r io.Reader) (data []byte, sawEOF bool, err error) {
	buf := make([]byte, 32<<10)
	for i := 0; ; i++ {
		n, err := r.Read(buf)
		data = append(data, buf[:n]...)
		if err == io.EOF {
			return data, true, nil
		}
		if err != nil {
			return data, false, err
		}
		if i > 1<<20 {
			return data, false, errors.New("reader never ends")
		}
	}
}

func testOpen(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	for i, size := range []int{0, 1, 4096, largeSize} {
		t.Run(fmt.Sprint(size, " bytes"), func(t *testing.T) {
			data := Blob(uint64(10+i), size)
			d := mustPut(t, s, data)

			r, err := s.Open(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(r, data); err != nil {
				t.Errorf("iotest.TestReader: %v", err)
			}
			// After the end, the reader keeps returning io.EOF.
			if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Errorf("Read after the end: got (%d, %v), want (0, io.EOF)", n, err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}

			// io.Copy takes the reader's WriteTo.
			r, err = s.Open(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if n, err := io.Copy(&buf, r); err != nil || n != int64(size) || !bytes.Equal(buf.Bytes(), data) {
				t.Errorf("io.Copy: got (%d, %v), want (%d, nil) and the same bytes", n, err, size)
			}
			r.Close()

			// A reader closed early has verified nothing and harms nothing.
			r, err = s.Open(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			r.Read(make([]byte, 1))
			r.Close()
			assertBlob(t, s, d, data)
		})
	}
}

func testOpenVerified(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	for i, size := range []int{0, 1, largeSize} {
		t.Run(fmt.Sprint(size, " bytes"), func(t *testing.T) {
			data := Blob(uint64(20+i), size)
			d := mustPut(t, s, data)
			r, info, err := s.OpenVerified(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			if info.Digest != d || info.Size != int64(size) || info.LastUsed.IsZero() {
				t.Errorf("Info: got %+v, want digest %s size %d and a last use", info, d, size)
			}
			if err := iotest.TestReader(r, data); err != nil {
				t.Errorf("iotest.TestReader: %v", err)
			}
			r.Close()

			r, _, err = s.OpenVerified(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if n, err := io.Copy(&buf, r); err != nil || n != int64(size) || !bytes.Equal(buf.Bytes(), data) {
				t.Errorf("io.Copy: got (%d, %v), want (%d, nil) and the same bytes", n, err, size)
			}
			r.Close()
		})
	}
}

func testNotFound(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, []byte("another blob"))
	d := digest.FromString("never stored")
	before := snapshot(t, s.Dir())
	for _, c := range digestCalls(s) {
		if c.name == "PutVerified" || c.name == "NewWriter" || c.name == "Tag" || c.name == "layout.BlobPath" {
			continue
		}
		if err := c.call(ctx, d); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s of a missing blob: got %v, want ErrNotFound", c.name, err)
		} else if !strings.Contains(err.Error(), string(d)) {
			t.Errorf("%s of a missing blob: got %q, want the digest named", c.name, err)
		}
	}
	assertUnchanged(t, s.Dir(), before)
}

func testStat(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	data := Blob(30, 12345)
	start := time.Now().Add(-time.Second)
	d := mustPut(t, s, data)
	info, err := s.Stat(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != d || info.Size != int64(len(data)) {
		t.Errorf("Stat: got %+v, want digest %s size %d", info, d, len(data))
	}
	if info.LastUsed.Before(start) || info.LastUsed.After(time.Now().Add(time.Second)) {
		t.Errorf("Stat: LastUsed %v, want about now", info.LastUsed)
	}
}

func testDelete(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	keep := Blob(31, 100)
	gone := Blob(32, 100)
	dk := mustPut(t, s, keep)
	dg := mustPut(t, s, gone)
	if err := s.Delete(ctx, dg); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	assertNoBlob(t, s, dg)
	if _, err := s.Get(ctx, dg); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Delete: got %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, dg); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Delete: got %v, want ErrNotFound", err)
	}
	assertBlob(t, s, dk, keep)
	// Deleted, a blob can be stored again.
	mustPut(t, s, gone)
	assertBlob(t, s, dg, gone)
}

func testDeleteWhileReading(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	data := Blob(33, largeSize)
	d := mustPut(t, s, data)
	r1, err := s.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, _, err := s.OpenVerified(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(r1, head); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r1)
	if err != nil || !bytes.Equal(append(head, rest...), data) {
		t.Errorf("Open reader after Delete: got %d bytes, %v; want the whole blob, verified", len(head)+len(rest), err)
	}
	got, err := io.ReadAll(r2)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("OpenVerified reader after Delete: got %d bytes, %v; want the whole blob", len(got), err)
	}
	assertNoBlob(t, s, d)
}

// testChangedWhileReading changes a blob's file under an open reader, as
// a person with an editor might: Open's reader fails, OpenVerified's reader
// serves exactly the bytes it verified or fails, and neither ends in io.EOF
// after serving wrong bytes.
func testChangedWhileReading(t *testing.T, open func(t *testing.T) *store.Store) {
	ctx := t.Context()
	data := Blob(34, largeSize)
	appendTo := func(t *testing.T, path string) {
		t.Helper()
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write([]byte("grown")); err != nil {
			t.Fatal(err)
		}
	}
	truncate := func(t *testing.T, path string) {
		t.Helper()
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, int64(len(data)/2)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("Open, file grows", func(t *testing.T) {
		s := open(t)
		d := mustPut(t, s, data)
		r, err := s.Open(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		appendTo(t, blobPath(t, s, d))
		if _, sawEOF, err := readSmall(r); sawEOF || !errors.Is(err, store.ErrCorrupted) {
			t.Errorf("read: got (EOF %v, %v), want ErrCorrupted", sawEOF, err)
		}
	})
	t.Run("Open, file shrinks", func(t *testing.T) {
		s := open(t)
		d := mustPut(t, s, data)
		r, err := s.Open(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		truncate(t, blobPath(t, s, d))
		if _, sawEOF, err := readSmall(r); sawEOF || !errors.Is(err, store.ErrCorrupted) {
			t.Errorf("read: got (EOF %v, %v), want ErrCorrupted", sawEOF, err)
		}
	})
	t.Run("OpenVerified, file grows", func(t *testing.T) {
		s := open(t)
		d := mustPut(t, s, data)
		r, _, err := s.OpenVerified(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		appendTo(t, blobPath(t, s, d))
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("read: got %d bytes, %v; want exactly the %d bytes verified", len(got), err, len(data))
		}
	})
	t.Run("OpenVerified, file shrinks", func(t *testing.T) {
		s := open(t)
		d := mustPut(t, s, data)
		r, _, err := s.OpenVerified(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		truncate(t, blobPath(t, s, d))
		if _, sawEOF, err := readSmall(r); sawEOF || !errors.Is(err, store.ErrCorrupted) {
			t.Errorf("read: got (EOF %v, %v), want ErrCorrupted", sawEOF, err)
		}
	})
}

func testWalk(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	want := map[digest.Digest]int64{}
	for i := range 3 {
		data := Blob(uint64(40+i), 100*(i+1))
		want[mustPut(t, s, data)] = int64(len(data))
	}
	data512 := Blob(43, 77)
	d512 := digest.SHA512.FromBytes(data512)
	if err := s.PutVerified(ctx, d512, -1, bytes.NewReader(data512)); err != nil {
		t.Fatal(err)
	}
	want[d512] = int64(len(data512))

	// Files that are not blobs are not the store's: Walk skips them.
	sha256Dir := s.Layout().AlgorithmDir(digest.SHA256)
	writeFile(t, filepath.Join(sha256Dir, "README"), "not a blob")
	writeFile(t, filepath.Join(sha256Dir, strings.ToUpper(digest.FromString("x").Encoded())), "uppercase name")
	writeFile(t, filepath.Join(sha256Dir, digest.FromString("y").Encoded()+".tmp"), "temp-like name")
	writeFile(t, s.Layout().Join(layout.BlobsDir, "md5", "d41d8cd98f00b204e9800998ecf8427e"), "unsupported algorithm")
	// An entry at a blob's name that is not a regular file is visited
	// with size 0, so that Verify can report it.
	planted := digest.FromString("planted directory")
	if err := os.Mkdir(blobPath(t, s, planted), 0o755); err != nil {
		t.Fatal(err)
	}
	want[planted] = 0

	got := map[digest.Digest]int64{}
	var order []digest.Algorithm
	err := s.Walk(ctx, func(i store.Info) error {
		if _, dup := got[i.Digest]; dup {
			t.Errorf("Walk visited %s twice", i.Digest)
		}
		got[i.Digest] = i.Size
		if i.LastUsed.IsZero() {
			t.Errorf("Walk: %s has no LastUsed", i.Digest)
		}
		order = append(order, i.Digest.Algorithm())
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	if len(got) != len(want) {
		t.Errorf("Walk visited %d blobs, want %d", len(got), len(want))
	}
	for d, size := range want {
		if g, ok := got[d]; !ok || g != size {
			t.Errorf("Walk: %s got size %d (visited %v), want %d", d, g, ok, size)
		}
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] == digest.SHA512 && order[i] == digest.SHA256 {
			t.Errorf("Walk order of algorithms: got %v, want sha256 first, then sha512", order)
			break
		}
	}

	errStop := errors.New("stop")
	calls := 0
	err = s.Walk(ctx, func(store.Info) error { calls++; return errStop })
	if !errors.Is(err, errStop) || calls != 1 {
		t.Errorf("Walk with failing fn: got (%v, %d calls), want (%v, 1 call)", err, calls, errStop)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Walk(cctx, func(store.Info) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Walk with a cancelled context: got %v, want context.Canceled", err)
	}

	empty := open(t)
	if err := empty.Walk(ctx, func(i store.Info) error { t.Errorf("Walk of an empty store visited %s", i.Digest); return nil }); err != nil {
		t.Errorf("Walk of an empty store: %v", err)
	}
}

func testClear(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	var ds []digest.Digest
	for i := range 3 {
		ds = append(ds, mustPut(t, s, Blob(uint64(50+i), 1000)))
	}
	data512 := Blob(53, 10)
	d512 := digest.SHA512.FromBytes(data512)
	if err := s.PutVerified(ctx, d512, -1, bytes.NewReader(data512)); err != nil {
		t.Fatal(err)
	}
	ds = append(ds, d512)
	if err := s.Tag(ctx, "example.com/app:v1", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: ds[0], Size: 1000}); err != nil {
		t.Fatal(err)
	}
	// A blob's name that holds a directory is the store's too.
	planted := digest.FromString("planted")
	writeFile(t, filepath.Join(blobPath(t, s, planted), "inner"), "x")

	foreign := []string{
		s.Layout().Join("NOTES.md"),
		filepath.Join(s.Layout().AlgorithmDir(digest.SHA256), "README"),
		s.Layout().Join(layout.BlobsDir, "md5", "d41d8cd98f00b204e9800998ecf8427e"),
	}
	for _, f := range foreign {
		writeFile(t, f, "not the store's")
	}
	youngTemp := s.Layout().Join(layout.IngestDir, "blob-young.tmp")
	oldTemp := s.Layout().Join(layout.IngestDir, "blob-old.tmp")
	writeFile(t, youngTemp, "a live writer's")
	writeFile(t, oldTemp, "a crashed writer's")
	setAge(t, oldTemp, 2*time.Hour)

	if err := s.Clear(ctx); err != nil {
		t.Fatalf("Clear: %v", err)
	}
	for _, d := range append(ds, planted) {
		assertNoBlob(t, s, d)
	}
	if err := s.Walk(ctx, func(i store.Info) error { t.Errorf("Walk after Clear visited %s", i.Digest); return nil }); err != nil {
		t.Fatal(err)
	}
	if refs, err := s.Refs(ctx); err != nil || len(refs) != 0 {
		t.Errorf("Refs after Clear: got (%v, %v), want none", refs, err)
	}
	for _, f := range foreign {
		if b, err := os.ReadFile(f); err != nil || string(b) != "not the store's" {
			t.Errorf("Clear removed or changed %s, which is not the store's (%v)", f, err)
		}
	}
	if !exists(t, youngTemp) {
		t.Error("Clear removed a young temp file, which a live writer may own")
	}
	if exists(t, oldTemp) {
		t.Error("Clear kept a temp file older than an hour")
	}

	// The store stays usable.
	data := Blob(54, 1000)
	d := mustPut(t, s, data)
	assertBlob(t, s, d, data)
	if err := s.Clear(ctx); err != nil {
		t.Errorf("second Clear: %v", err)
	}
}

func testVerify(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	data := Blob(60, largeSize)
	d := mustPut(t, s, data)
	info, err := s.Verify(ctx, d)
	if err != nil {
		t.Fatalf("Verify of a good blob: %v", err)
	}
	if info.Digest != d || info.Size != int64(len(data)) {
		t.Errorf("Verify: got %+v, want digest %s size %d", info, d, len(data))
	}
	// Corrupted: reported, and left in place for the caller.
	bad := bytes.Clone(data)
	bad[0] ^= 1
	replaceFile(t, blobPath(t, s, d), bad)
	if _, err := s.Verify(ctx, d); !errors.Is(err, store.ErrCorrupted) {
		t.Errorf("Verify of a corrupted blob: got %v, want ErrCorrupted", err)
	}
	if b, err := os.ReadFile(blobPath(t, s, d)); err != nil || !bytes.Equal(b, bad) {
		t.Errorf("Verify removed or changed the corrupted file (%v)", err)
	}
}

// testLastUsed checks, with the real clock, that reads refresh a blob's
// last use only when it is older than an hour, and that Stat and Verify
// never do.
func testLastUsed(t *testing.T, open func(t *testing.T) *store.Store) {
	ctx := t.Context()
	reads := []struct {
		name    string
		read    func(s *store.Store, d digest.Digest) error
		refresh bool
	}{
		{"Open", func(s *store.Store, d digest.Digest) error {
			r, err := s.Open(ctx, d)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(io.Discard, r)
			return err
		}, true},
		{"Get", func(s *store.Store, d digest.Digest) error { _, err := s.Get(ctx, d); return err }, true},
		{"OpenVerified", func(s *store.Store, d digest.Digest) error {
			r, _, err := s.OpenVerified(ctx, d)
			if err == nil {
				r.Close()
			}
			return err
		}, true},
		{"Verify", func(s *store.Store, d digest.Digest) error { _, err := s.Verify(ctx, d); return err }, false},
		{"Stat", func(s *store.Store, d digest.Digest) error { _, err := s.Stat(ctx, d); return err }, false},
	}
	s := open(t)
	for i, rd := range reads {
		t.Run(rd.name, func(t *testing.T) {
			d := mustPut(t, s, Blob(uint64(70+i), 100))
			path := blobPath(t, s, d)

			recent := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
			setTime(t, path, recent)
			if err := rd.read(s, d); err != nil {
				t.Fatal(err)
			}
			if got := mtime(t, path); !got.Equal(recent) {
				t.Errorf("read 30 min after last use: mtime got %v, want %v (unchanged)", got, recent)
			}

			old := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
			setTime(t, path, old)
			start := time.Now().Add(-time.Second)
			if err := rd.read(s, d); err != nil {
				t.Fatal(err)
			}
			got := mtime(t, path)
			if rd.refresh && got.Before(start) {
				t.Errorf("read 2 h after last use: mtime got %v, want about now", got)
			}
			if !rd.refresh && !got.Equal(old) {
				t.Errorf("%s changed the last use: mtime got %v, want %v", rd.name, got, old)
			}
		})
	}
}

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
		writeFile(t, filepath.Join(path, "blob"), string(good))
		return nil
	}},
	{"replaced by a symlink to another blob", false, func(t *testing.T, s *store.Store, path string, _ []byte) []string {
		other := blobPath(t, s, mustPut(t, s, []byte("another blob")))
		symlink(t, other, path)
		return []string{other}
	}},
	{"replaced by a symlink to a file with the right content (symlinks are never followed)", false, func(t *testing.T, _ *store.Store, path string, good []byte) []string {
		target := filepath.Join(t.TempDir(), "copy")
		writeFile(t, target, string(good))
		symlink(t, target, path)
		return []string{target}
	}},
	{"replaced by a relative symlink to a copy inside the cache", false, func(t *testing.T, s *store.Store, path string, good []byte) []string {
		target := s.Layout().Join("copy")
		writeFile(t, target, string(good))
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
					keepSnap := snapshotFiles(t, keep)
					var err error
					within(t, 10*time.Second, func() { err = rd.read(t, s, c.regular) })
					if !errors.Is(err, store.ErrCorrupted) {
						t.Errorf("got %v, want ErrCorrupted", err)
					}
					if exists(t, path) {
						t.Error("the bad entry is still at the blob's name")
					}
					if diff := keepSnap.diff(snapshotFiles(t, keep)); diff != "" {
						t.Errorf("removing the bad entry touched other files:\n%s", diff)
					}
					// The store heals: the blob can be stored again.
					if err := s.PutVerified(t.Context(), d, int64(len(good)), bytes.NewReader(good)); err != nil {
						t.Fatalf("PutVerified after the removal: %v", err)
					}
					if _, err := s.Verify(t.Context(), d); err != nil {
						t.Errorf("Verify after the blob was stored again: %v", err)
					}
				})
			}

			t.Run("Verify reports and leaves it", func(t *testing.T) {
				s := open(t)
				path := blobPath(t, s, mustPut(t, s, good))
				c.apply(t, s, path, good)
				before := snapshot(t, s.Dir())
				var err error
				within(t, 10*time.Second, func() { _, err = s.Verify(t.Context(), d) })
				if !errors.Is(err, store.ErrCorrupted) {
					t.Errorf("Verify: got %v, want ErrCorrupted", err)
				}
				assertUnchanged(t, s.Dir(), before)
			})

			t.Run("Stat", func(t *testing.T) {
				s := open(t)
				path := blobPath(t, s, mustPut(t, s, good))
				c.apply(t, s, path, good)
				before := snapshot(t, s.Dir())
				var err error
				within(t, 10*time.Second, func() { _, err = s.Stat(t.Context(), d) })
				switch {
				case c.regular && err != nil:
					t.Errorf("Stat of a regular file: got %v, want nil (Stat does not hash)", err)
				case !c.regular && !errors.Is(err, store.ErrCorrupted):
					t.Errorf("Stat of a non-regular entry: got %v, want ErrCorrupted", err)
				}
				assertUnchanged(t, s.Dir(), before)
			})
		})
	}
}

// testInvalidDigest runs every invalid digest through every method that
// takes a digest: each gives ErrInvalidDigest and no file is created,
// changed or removed.
func testInvalidDigest(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, []byte("present"))
	before := snapshot(t, s.Dir())
	for _, tc := range InvalidDigests {
		t.Run(tc.Reason, func(t *testing.T) {
			for _, c := range digestCalls(s) {
				if c.name == "NewWriter" && tc.Digest == "" {
					// An empty expected digest asks NewWriter to
					// compute one: that is Put, not an invalid digest.
					continue
				}
				var err error
				within(t, 10*time.Second, func() { err = c.call(ctx, tc.Digest) })
				if !errors.Is(err, store.ErrInvalidDigest) {
					t.Errorf("%s(%q): got %v, want ErrInvalidDigest", c.name, tc.Digest, err)
				}
			}
		})
	}
	assertUnchanged(t, s.Dir(), before)
}

type digestCall struct {
	name string
	call func(ctx context.Context, d digest.Digest) error
}

// digestCalls are the methods of s that take a digest, each wrapped to
// return only its error.
func digestCalls(s *store.Store) []digestCall {
	return []digestCall{
		{"layout.BlobPath", func(_ context.Context, d digest.Digest) error {
			_, err := s.Layout().BlobPath(d)
			return err
		}},
		{"Open", func(ctx context.Context, d digest.Digest) error {
			r, err := s.Open(ctx, d)
			if r != nil {
				r.Close()
			}
			return err
		}},
		{"OpenVerified", func(ctx context.Context, d digest.Digest) error {
			r, _, err := s.OpenVerified(ctx, d)
			if r != nil {
				r.Close()
			}
			return err
		}},
		{"Get", func(ctx context.Context, d digest.Digest) error { _, err := s.Get(ctx, d); return err }},
		{"Stat", func(ctx context.Context, d digest.Digest) error { _, err := s.Stat(ctx, d); return err }},
		{"Delete", func(ctx context.Context, d digest.Digest) error { return s.Delete(ctx, d) }},
		{"Verify", func(ctx context.Context, d digest.Digest) error { _, err := s.Verify(ctx, d); return err }},
		{"PutVerified", func(ctx context.Context, d digest.Digest) error {
			return s.PutVerified(ctx, d, 7, strings.NewReader("present"))
		}},
		{"NewWriter", func(ctx context.Context, d digest.Digest) error {
			w, err := s.NewWriter(ctx, d, -1)
			if w != nil {
				w.Close()
			}
			return err
		}},
		{"Tag", func(ctx context.Context, d digest.Digest) error {
			return s.Tag(ctx, "example.com/app:v1", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 7})
		}},
	}
}

// InvalidDigests are inputs that must never become a path, each with the
// reason it is invalid. layout's tests hold the same table.
var InvalidDigests = []struct {
	Digest digest.Digest
	Reason string
}{
	{"", "empty"},
	{digest.Digest(hex64), "no algorithm"},
	{digest.Digest(":" + hex64), "empty algorithm"},
	{"md5:d41d8cd98f00b204e9800998ecf8427e", "unknown algorithm md5"},
	{digest.Digest("sha384:" + hex64 + hex64[:32]), "sha384 is a valid go-digest algorithm but not one a layout stores"},
	{digest.Digest("sha1:" + hex64[:40]), "unknown algorithm sha1"},
	{digest.Digest("SHA256:" + hex64), "uppercase algorithm"},
	{digest.Digest("sha256+b64u:" + hex64), "algorithm with a separator"},
	{digest.Digest("sha256:" + strings.ToUpper(hex64)), "uppercase hex"},
	{digest.Digest("sha256:" + hex64[:63] + "A"), "one uppercase hex digit"},
	{digest.Digest("sha256:" + hex64[:63] + "g"), "non-hex letter"},
	{digest.Digest("sha256:" + hex64[:10]), "wrong length: short"},
	{digest.Digest("sha256:" + hex64[:63]), "wrong length: one digit short"},
	{digest.Digest("sha256:" + hex64 + "0"), "wrong length: one digit long"},
	{digest.Digest("sha256:" + hex64 + hex64), "wrong length: sha512 length under sha256"},
	{digest.Digest("sha512:" + hex64), "wrong length: sha256 length under sha512"},
	{"sha256:../../etc/passwd", "path traversal"},
	{digest.Digest("sha256:../" + hex64[:61]), "path traversal of the right length"},
	{digest.Digest("sha256:" + hex64[:32] + "\x00" + hex64[:31]), "embedded NUL"},
	{digest.Digest("sha256:" + hex64 + "\x00"), "trailing NUL"},
	{digest.Digest("sha256:" + hex64[:32] + "/" + hex64[:31]), "embedded slash"},
	{digest.Digest("sha256:/" + hex64[:63]), "leading slash"},
	{digest.Digest(" sha256:" + hex64), "leading space"},
	{digest.Digest("sha256:" + hex64 + " "), "trailing space"},
	{digest.Digest("sha256:" + hex64 + "\n"), "trailing newline"},
	{digest.Digest("sha256: " + hex64[:63]), "space after the colon"},
	{"sha256:", "sha256: with empty hex"},
	{"sha256", "algorithm without colon"},
	{digest.Digest("sha256::" + hex64), "double colon"},
	{digest.Digest("sha256:sha256:" + hex64), "algorithm twice"},
	{digest.Digest("sha256:" + hex64[:62] + "é"), "non-ASCII byte"},
}

var hex64 = strings.Repeat("0123456789abcdef", 4)

// testCancelledContext calls every method with a cancelled context: each
// returns context.Canceled and touches nothing.
func testCancelledContext(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	d := mustPut(t, s, []byte("present"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	before := snapshot(t, s.Dir())
	calls := digestCalls(s)[1:] // all but layout.BlobPath, which takes no ctx
	for _, c := range calls {
		if c.name == "PutVerified" {
			// A stored blob may be acknowledged without any work.
			continue
		}
		if err := c.call(ctx, d); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: got %v, want context.Canceled", c.name, err)
		}
	}
	others := []struct {
		name string
		call func() error
	}{
		{"Put", func() error { _, err := s.Put(ctx, strings.NewReader("new")); return err }},
		{"PutVerified of a new blob", func() error {
			return s.PutVerified(ctx, digest.FromString("new"), 3, strings.NewReader("new"))
		}},
		{"Walk", func() error { return s.Walk(ctx, func(store.Info) error { return nil }) }},
		{"Clear", func() error { return s.Clear(ctx) }},
		{"Prune", func() error { _, err := s.Prune(ctx, store.Policy{MaxSize: 1}); return err }},
		{"Refs", func() error { _, err := s.Refs(ctx); return err }},
		{"Resolve", func() error { _, err := s.Resolve(ctx, "x"); return err }},
		{"Untag", func() error { return s.Untag(ctx, "x") }},
	}
	for _, c := range others {
		if err := c.call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: got %v, want context.Canceled", c.name, err)
		}
	}
	assertUnchanged(t, s.Dir(), before)
}

// testConcurrent has goroutines put, read and delete the same few blobs at
// once: every read gives the right bytes or ErrNotFound.
func testConcurrent(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	var blobs [][]byte
	for i := range 4 {
		blobs = append(blobs, Blob(uint64(90+i), 1000+i*300_000))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 40 {
				data := blobs[rng.IntN(len(blobs))]
				d := digest.FromBytes(data)
				switch op := rng.IntN(5); op {
				case 0:
					if got, err := s.Put(ctx, bytes.NewReader(data)); err != nil || got != d {
						t.Errorf("Put: got (%s, %v), want %s", got, err, d)
					}
				case 1:
					if err := s.Delete(ctx, d); err != nil && !errors.Is(err, store.ErrNotFound) {
						t.Errorf("Delete: %v", err)
					}
				case 2:
					got, err := s.Get(ctx, d)
					if err == nil && !bytes.Equal(got, data) || err != nil && !errors.Is(err, store.ErrNotFound) {
						t.Errorf("Get: got %d bytes, %v", len(got), err)
					}
				case 3:
					r, err := s.Open(ctx, d)
					if err != nil {
						if !errors.Is(err, store.ErrNotFound) {
							t.Errorf("Open: %v", err)
						}
						continue
					}
					got, err := io.ReadAll(r)
					r.Close()
					if err != nil || !bytes.Equal(got, data) {
						t.Errorf("Open read: got %d bytes, %v", len(got), err)
					}
				case 4:
					r, _, err := s.OpenVerified(ctx, d)
					if err != nil {
						if !errors.Is(err, store.ErrNotFound) {
							t.Errorf("OpenVerified: %v", err)
						}
						continue
					}
					got, err := io.ReadAll(r)
					r.Close()
					if err != nil || !bytes.Equal(got, data) {
						t.Errorf("OpenVerified read: got %d bytes, %v", len(got), err)
					}
				}
			}
		})
	}
	wg.Wait()
	assertIngestClean(t, s)
}

// within runs fn and fails the test if it has not returned after timeout,
// so that a read that blocks (on a FIFO, say) fails instead of hanging.
func within(t *testing.T, timeout time.Duration, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("still blocked after %v", timeout)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceFile puts a new file with content at path, as an editor saving a
// read-only file would.
func replaceFile(t *testing.T, path string, content []byte) {
	t.Helper()
	removeFile(t, path)
	if err := os.WriteFile(path, content, 0o444); err != nil {
		t.Fatal(err)
	}
}

func removeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, path string) {
	t.Helper()
	removeFile(t, path)
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

func setAge(t *testing.T, path string, age time.Duration) {
	t.Helper()
	setTime(t, path, time.Now().Add(-age))
}

func setTime(t *testing.T, path string, when time.Time) {
	t.Helper()
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}

func mtime(t *testing.T, path string) time.Time {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}
