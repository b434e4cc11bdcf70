package storetest

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

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
	p, err := layout.Path(s.Dir()).BlobPath(d)
	if err != nil {
		t.Fatalf("BlobPath(%s): %v", d, err)
	}
	return p
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
	entries, err := os.ReadDir(layout.Path(s.Dir()).Join(layout.IngestDir))
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
	if testutil.Exists(t, blobPath(t, s, d)) {
		t.Errorf("a file is at the final name of %s", d)
	}
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

// snapshotBlobs records the tree below blobs/.
func snapshotBlobs(t *testing.T, s *store.Store) testutil.Tree {
	t.Helper()
	return testutil.Snapshot(t, layout.Path(s.Dir()).Join(layout.BlobsDir))
}
