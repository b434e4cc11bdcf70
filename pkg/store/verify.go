package store

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ocibuild/layercache/internal/diskerr"
)

// VerifyAll hashes every stored blob, jobs blobs at a time, and calls fn
// with each blob as Walk found it and the outcome of its hash, as the hash
// completes and one call at a time (fn needs no lock of its own). The
// error is nil if the blob's bytes matched its digest; otherwise it wraps
// ErrCorrupted (the bytes, the size or the kind of file are wrong) or
// ErrNotFound (the blob was removed while VerifyAll ran, which leaves
// nothing wrong in the store).
//
// Like Stat with VerifyFirst, VerifyAll neither removes a corrupted blob
// nor refreshes a last use: what to do with a bad blob is the caller's
// call (Delete it, say, then Prune with a zero Policy to drop the refs it
// named).
//
// Any error but ErrCorrupted and ErrNotFound (a failed read, ctx done)
// stops VerifyAll, which returns it once the hashes in flight have ended.
// A jobs below 1 is an error.
func (s *Store) VerifyAll(ctx context.Context, jobs int, fn func(Info, error)) (err error) {
	defer diskerr.MarkAt(&err)
	if jobs < 1 {
		return fmt.Errorf("verifying blobs: jobs must be at least 1, got %d", jobs)
	}
	// Walk first, then hash: a walk is quick (no blob is read), and
	// hashing while the directory is read would hold its handle open for
	// the whole of a long verify.
	var blobs []Info
	if err := s.Walk(ctx, func(i Info) error {
		blobs = append(blobs, i)
		return nil
	}); err != nil {
		return err
	}
	var mu sync.Mutex
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(jobs)
	for _, b := range blobs {
		eg.Go(func() error {
			_, err := s.verify(ectx, b.Digest)
			if err != nil && !errors.Is(err, ErrCorrupted) && !errors.Is(err, ErrNotFound) {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			fn(b, err)
			return nil
		})
	}
	return eg.Wait()
}
