package storetest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

// testInvalidDigest runs every invalid digest through every method that
// takes a digest: each gives ErrInvalidDigest and no file is created,
// changed or removed.
func testInvalidDigest(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, []byte("present"))
	before := testutil.Snapshot(t, s.Dir())
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
	testutil.AssertUnchanged(t, s.Dir(), before)
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
			_, err := layout.Path(s.Dir()).BlobPath(d)
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
		{"Verify", func(ctx context.Context, d digest.Digest) error {
			_, err := s.Stat(ctx, d, store.VerifyFirst)
			return err
		}},
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
// reason it is invalid. layout's tests check the same table.
var InvalidDigests = testutil.InvalidDigests

// testCancelledContext calls every method with a cancelled context: each
// returns context.Canceled and touches nothing.
func testCancelledContext(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	d := mustPut(t, s, []byte("present"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	before := testutil.Snapshot(t, s.Dir())
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
	testutil.AssertUnchanged(t, s.Dir(), before)
}
