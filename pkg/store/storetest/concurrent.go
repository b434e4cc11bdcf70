package storetest

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

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
