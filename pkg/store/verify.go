package store

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ocibuild/layercache/internal/diskerr"
)

// Result is the outcome of hashing one blob in VerifyAll.
type Result struct {
	// Info is the blob as Walk found it, before it was hashed.
	Info
	// Err is nil if the blob's bytes matched its digest. Otherwise it
	// wraps ErrCorrupted (the bytes, the size or the kind of file are
	// wrong) or ErrNotFound (the blob was removed while VerifyAll ran,
	// which leaves nothing wrong in the store).
	Err error
}

// VerifyAll hashes every stored blob, jobs blobs at a time, and calls fn
// with each blob's Result as its hash completes, one call at a time (fn
// needs no lock of its own). Like Verify, it neither removes a corrupted
// blob nor refreshes a last use: what to do with a bad blob is the
// caller's call (Delete it, say, then Prune with a zero Policy to drop
// the refs it named).
//
// Any error but ErrCorrupted and ErrNotFound (a failed read, ctx done)
// stops VerifyAll, which returns it once the hashes in flight have ended.
// A jobs below 1 is an error.
func (s *Store) VerifyAll(ctx context.Context, jobs int, fn func(Result)) (err error) {
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
			_, err := s.Verify(ectx, b.Digest)
			if err != nil && !errors.Is(err, ErrCorrupted) && !errors.Is(err, ErrNotFound) {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			fn(Result{Info: b, Err: err})
			return nil
		})
	}
	return eg.Wait()
}
