package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

func TestLockBlob(t *testing.T) {
	tests := []struct {
		second func(t *testing.T, s *store.Store) *store.Store
		reason string
	}{
		{func(_ *testing.T, s *store.Store) *store.Store { return s }, "another goroutine of the same Store"},
		{func(t *testing.T, s *store.Store) *store.Store { return mustOpen(t, s.Dir()) }, "another Store on the same directory, as another process (flock)"},
	}
	d := digest.FromString("layer")
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			s := mustOpen(t, t.TempDir())
			other := tc.second(t, s)
			unlock, err := s.LockBlob(context.Background(), d)
			if err != nil {
				t.Fatal(err)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if u, err := other.LockBlob(ctx, d); !errors.Is(err, context.DeadlineExceeded) {
				if u != nil {
					u()
				}
				t.Fatalf("second LockBlob: got %v, want context.DeadlineExceeded", err)
			}
			// Other digests are not excluded.
			u, err := other.LockBlob(context.Background(), digest.FromString("other"))
			if err != nil {
				t.Fatalf("LockBlob of another digest: %v", err)
			}
			u()

			got := make(chan error, 1)
			go func() {
				u, err := other.LockBlob(context.Background(), d)
				if err == nil {
					u()
				}
				got <- err
			}()
			select {
			case err := <-got:
				t.Fatalf("waiter got the lock while it was held (%v)", err)
			case <-time.After(50 * time.Millisecond):
			}
			unlock()
			unlock() // a second call is harmless
			select {
			case err := <-got:
				if err != nil {
					t.Errorf("waiter: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("waiter did not get the released lock")
			}
		})
	}
}

func TestLockBlob_Refused(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	before := listTree(t, s.Dir())
	if u, err := s.LockBlob(context.Background(), "sha256:../../etc/passwd"); !errors.Is(err, store.ErrInvalidDigest) || u != nil {
		t.Errorf("LockBlob of an invalid digest: got (%v, %v), want (nil, ErrInvalidDigest)", u != nil, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if u, err := s.LockBlob(ctx, digest.FromString("x")); !errors.Is(err, context.Canceled) || u != nil {
		t.Errorf("LockBlob with a cancelled context: got (%v, %v), want (nil, context.Canceled)", u != nil, err)
	}
	if got := listTree(t, s.Dir()); len(got) != len(before) {
		t.Errorf("refused LockBlob calls created files: got %q, want %q", got, before)
	}
}
