package storetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

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
	sha256Dir := layout.Path(s.Dir()).AlgorithmDir(digest.SHA256)
	testutil.WriteFile(t, filepath.Join(sha256Dir, "README"), "not a blob")
	testutil.WriteFile(t, filepath.Join(sha256Dir, strings.ToUpper(digest.FromString("x").Encoded())), "uppercase name")
	testutil.WriteFile(t, filepath.Join(sha256Dir, digest.FromString("y").Encoded()+".tmp"), "temp-like name")
	testutil.WriteFile(t, layout.Path(s.Dir()).Join(layout.BlobsDir, "md5", "d41d8cd98f00b204e9800998ecf8427e"), "unsupported algorithm")
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
	testutil.WriteFile(t, filepath.Join(blobPath(t, s, planted), "inner"), "x")

	foreign := []string{
		layout.Path(s.Dir()).Join("NOTES.md"),
		filepath.Join(layout.Path(s.Dir()).AlgorithmDir(digest.SHA256), "README"),
		layout.Path(s.Dir()).Join(layout.BlobsDir, "md5", "d41d8cd98f00b204e9800998ecf8427e"),
	}
	for _, f := range foreign {
		testutil.WriteFile(t, f, "not the store's")
	}
	youngTemp := layout.Path(s.Dir()).Join(layout.IngestDir, "blob-young.tmp")
	oldTemp := layout.Path(s.Dir()).Join(layout.IngestDir, "blob-old.tmp")
	testutil.WriteFile(t, youngTemp, "a live writer's")
	testutil.WriteFile(t, oldTemp, "a crashed writer's")
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
	if !testutil.Exists(t, youngTemp) {
		t.Error("Clear removed a young temp file, which a live writer may own")
	}
	if testutil.Exists(t, oldTemp) {
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
