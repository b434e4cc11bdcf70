package store

import (
	"context"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/internal/faultpoint"
)

// blobLocks serialises, within one process, the holders of a digest's
// lock. flock(2) would do that too, but a goroutine waiting on a channel
// wakes the moment the lock is free, with no polling.
type blobLocks struct {
	mu      sync.Mutex
	waiters map[digest.Digest]chan struct{}
}

func (l *blobLocks) lock(ctx context.Context, d digest.Digest) error {
	for {
		l.mu.Lock()
		if l.waiters == nil {
			l.waiters = map[digest.Digest]chan struct{}{}
		}
		ch, held := l.waiters[d]
		if !held {
			l.waiters[d] = make(chan struct{})
			l.mu.Unlock()
			return nil
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *blobLocks) unlock(d digest.Digest) {
	l.mu.Lock()
	ch := l.waiters[d]
	delete(l.waiters, d)
	l.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// LockBlob takes the exclusive lock of digest d, shared by every goroutine
// of the process that uses this Store and, through flock(2) on a file in
// ingest/, by every process that uses the same directory. It waits until
// the lock is free or ctx is done. The kernel releases the file lock if the
// holder dies.
//
// Downloaders hold it so that a blob is fetched once: after taking it,
// check the store again before fetching. The returned func releases the
// lock; call it exactly once. If the lock file cannot be created (a
// read-only cache), LockBlob still serialises the goroutines of this
// process and returns the file error alongside a valid unlock func, so a
// caller may go on without cross-process exclusion.
func (s *Store) LockBlob(ctx context.Context, d digest.Digest) (unlock func(), err error) {
	defer diskerr.MarkAt(&err)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := s.path.BlobPath(d); err != nil {
		return nil, err
	}
	if err := s.locks.lock(ctx, d); err != nil {
		return nil, err
	}
	fl, ferr := s.path.LockBlob(ctx, d)
	if ferr != nil && ctx.Err() != nil {
		s.locks.unlock(d)
		return nil, ctx.Err()
	}
	faultpoint.Hit("blob:locked")
	var once sync.Once
	return func() {
		once.Do(func() {
			fl.Unlock()
			s.locks.unlock(d)
		})
	}, ferr
}
