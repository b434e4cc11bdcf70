// Package testhook holds switches that layercache's own tests use to make
// behaviour that depends on timing deterministic. They are test-only:
// nothing outside tests sets them, and with none set every package behaves
// as it does in production. The package is internal, so only packages
// under github.com/ocibuild/layercache (the integration module's
// included) can import it.
//
// A switch is a value of a context, not a global variable, so that it
// holds for the one call a test makes and not for the tests running in
// parallel beside it.
package testhook

import (
	"context"
	"sync/atomic"
)

type noEagerGraceKey struct{}

// WithoutEagerGrace returns a context under which the early manifest
// request of an anonymous pull (pkg/remotecache/eager.go) is never given up
// for taking long. In production it is given up once ggcr's handshake
// beside it has been done for as long as it took (at least 50 ms), and
// ggcr asks for the manifest instead: on a busy machine a goroutine
// stalled past that turns one manifest request into two. Under this
// context the early request is waited for until it is answered or fails,
// or ctx is done, so tests that count requests get the same counts
// however busy the machine.
//
// A test whose early request is never answered must not use it, or give
// ctx a deadline: its pull waits for that request until ctx is done.
func WithoutEagerGrace(ctx context.Context) context.Context {
	return context.WithValue(ctx, noEagerGraceKey{}, true)
}

// NoEagerGrace reports whether ctx comes from WithoutEagerGrace.
func NoEagerGrace(ctx context.Context) bool {
	v, _ := ctx.Value(noEagerGraceKey{}).(bool)
	return v
}

type hashStateEveryKey struct{}

// WithHashStateEvery returns a context under which a store Writer of a
// partial download (store.OpenPartial) saves its hash state every n bytes
// instead of every 16 MiB, so that tests with layers of a few MiB, and
// their child processes, get hash-state sidecars to resume from.
func WithHashStateEvery(ctx context.Context, n int64) context.Context {
	return context.WithValue(ctx, hashStateEveryKey{}, n)
}

// HashStateEvery returns the n of WithHashStateEvery, or 0 if ctx has none.
func HashStateEvery(ctx context.Context) int64 {
	v, _ := ctx.Value(hashStateEveryKey{}).(int64)
	return v
}

type prefixHashedKey struct{}

// WithPrefixHashed returns a context under which a store Writer of a
// partial download adds to *n each byte of the resumed prefix that it
// hashes before the download goes on (the synchronous part of a resume),
// so that tests can tell a resume from a saved hash state from one that
// hashed the whole prefix, by count rather than by time.
func WithPrefixHashed(ctx context.Context, n *atomic.Int64) context.Context {
	return context.WithValue(ctx, prefixHashedKey{}, n)
}

// PrefixHashed returns the counter of WithPrefixHashed, or nil.
func PrefixHashed(ctx context.Context) *atomic.Int64 {
	v, _ := ctx.Value(prefixHashedKey{}).(*atomic.Int64)
	return v
}
