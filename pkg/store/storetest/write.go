package storetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

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
	if d := before.Diff(snapshotBlobs(t, s)); d != "" {
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
