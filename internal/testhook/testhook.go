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

import "context"

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
