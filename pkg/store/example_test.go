package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

func ExampleStore_Put() {
	dir, err := os.MkdirTemp("", "layercache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	s, err := store.Open(dir)
	if err != nil {
		log.Fatal(err)
	}
	// The digest is computed from the data, never taken from the caller.
	d, err := s.Put(ctx, strings.NewReader(`{"schemaVersion":2}`))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(d)

	// Get is for small blobs such as manifests and configs.
	b, err := s.Get(ctx, d)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(b))

	_, err = s.Get(ctx, digest.FromString("never stored"))
	fmt.Println(errors.Is(err, store.ErrNotFound))
	// Output:
	// sha256:bafebd36189ad3688b7b3915ea55d461e0bfcfbdde11e54b0a123999fb6be50f
	// {"schemaVersion":2}
	// true
}

func ExampleStore_Open() {
	dir, err := os.MkdirTemp("", "layercache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	s, err := store.Open(dir)
	if err != nil {
		log.Fatal(err)
	}
	d, err := s.Put(ctx, strings.NewReader("layer bytes\n"))
	if err != nil {
		log.Fatal(err)
	}

	// The reader hashes what it serves: io.Copy ends without error only
	// if the bytes matched the digest.
	r, err := s.Open(ctx, d)
	if err != nil {
		log.Fatal(err)
	}
	_, err = io.Copy(os.Stdout, r)
	r.Close()
	fmt.Println("verified:", err == nil)

	// Someone edits the blob on disk.
	path, _ := layout.Path(s.Dir()).BlobPath(d)
	os.Remove(path)
	os.WriteFile(path, []byte("layer bytez\n"), 0o444)

	r, err = s.Open(ctx, d)
	if err != nil {
		log.Fatal(err)
	}
	_, err = io.Copy(io.Discard, r)
	r.Close()
	fmt.Println("corrupted:", errors.Is(err, store.ErrCorrupted))
	_, err = s.Stat(ctx, d)
	fmt.Println("removed:", errors.Is(err, store.ErrNotFound))
	// Output:
	// layer bytes
	// verified: true
	// corrupted: true
	// removed: true
}

// A tool that checks a cache looks with Inspect, which changes nothing;
// the pull path opens with VerifyFirst, which serves no byte before the
// whole blob matched.
func ExampleVerifyFirst() {
	dir, err := os.MkdirTemp("", "layercache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	s, err := store.Open(dir)
	if err != nil {
		log.Fatal(err)
	}
	d, err := s.Put(ctx, strings.NewReader("config bytes\n"))
	if err != nil {
		log.Fatal(err)
	}
	path, _ := layout.Path(s.Dir()).BlobPath(d)
	os.Remove(path)
	os.WriteFile(path, []byte("config bytez\n"), 0o444)

	_, err = s.Stat(ctx, d, store.VerifyFirst)
	fmt.Println("Stat with VerifyFirst, corrupted:", errors.Is(err, store.ErrCorrupted))
	_, err = s.Get(ctx, d, store.Inspect)
	fmt.Println("Get with Inspect, corrupted:", errors.Is(err, store.ErrCorrupted))
	_, err = s.Stat(ctx, d)
	fmt.Println("still there:", err == nil)

	_, err = s.Open(ctx, d, store.VerifyFirst)
	fmt.Println("Open with VerifyFirst, corrupted:", errors.Is(err, store.ErrCorrupted))
	_, err = s.Stat(ctx, d)
	fmt.Println("removed:", errors.Is(err, store.ErrNotFound))
	// Output:
	// Stat with VerifyFirst, corrupted: true
	// Get with Inspect, corrupted: true
	// still there: true
	// Open with VerifyFirst, corrupted: true
	// removed: true
}

func ExampleStore_PutVerified() {
	dir, err := os.MkdirTemp("", "layercache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	s, err := store.Open(dir)
	if err != nil {
		log.Fatal(err)
	}

	// A registry said the blob is d; the bytes that came are not.
	d := digest.FromString("what the manifest promised")
	err = s.PutVerified(ctx, d, -1, strings.NewReader("what the network delivered"))
	fmt.Println(errors.Is(err, store.ErrDigestMismatch))
	_, err = s.Stat(ctx, d)
	fmt.Println(errors.Is(err, store.ErrNotFound))
	// Output:
	// true
	// true
}

func ExampleStore_Prune() {
	dir, err := os.MkdirTemp("", "layercache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	s, err := store.Open(dir)
	if err != nil {
		log.Fatal(err)
	}

	// Three blobs of 100 bytes, last used 1, 2 and 3 days ago. Last use
	// is the file's mtime, which reads refresh at most once an hour.
	for days, fill := range []string{"a", "b", "c"} {
		d, err := s.Put(ctx, strings.NewReader(strings.Repeat(fill, 100)))
		if err != nil {
			log.Fatal(err)
		}
		path, _ := layout.Path(s.Dir()).BlobPath(d)
		when := time.Now().Add(-time.Duration(days+1) * 24 * time.Hour)
		os.Chtimes(path, when, when)
	}

	// Keep at most 150 bytes: the least recently used go first.
	rep, err := s.Prune(ctx, store.Policy{MaxSize: 150})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("removed %d blobs (%d bytes), kept %d (%d bytes)\n", len(rep.Removed), rep.FreedBytes, rep.Kept, rep.KeptBytes)
	// Output:
	// removed 2 blobs (200 bytes), kept 1 (100 bytes)
}

// A download that is also streamed to its consumer is stored with one
// copy and one hash: the Writer reads the body into its own buffers, and
// io.TeeReader hands each piece to the consumer on the way.
func ExampleWriter_ReadFrom() {
	dir, err := os.MkdirTemp("", "layercache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	s, err := store.Open(dir)
	if err != nil {
		log.Fatal(err)
	}

	body := strings.NewReader("layer bytes from a registry") // an HTTP response body
	want := digest.FromString("layer bytes from a registry") // the digest the manifest names
	w, err := s.NewWriter(ctx, want, int64(body.Len()))
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	var consumer strings.Builder // what the build reads
	if _, err := w.ReadFrom(io.TeeReader(body, &consumer)); err != nil {
		log.Fatal(err)
	}
	got, err := w.Commit() // ErrDigestMismatch if the body was not want
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(got == want, consumer.String())
	// Output: true layer bytes from a registry
}
