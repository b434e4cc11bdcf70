// Command layercache warms, inspects, verifies, prunes and clears a
// layercache directory: a content-addressed, digest-verified cache of OCI
// image blobs that image builds read their base images from.
//
// Run `layercache --help` for the commands, and `layercache demo` for a
// quick start that needs no network.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := notifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// signalError is the cause of a context that a signal ended (see
// context.Cause): run exits with 128 plus the signal's number, as a shell
// reports a process that the signal ended.
type signalError struct{ sig syscall.Signal }

func (e signalError) Error() string {
	switch e.sig {
	case syscall.SIGINT:
		return "interrupted"
	case syscall.SIGTERM:
		return "terminated"
	}
	return e.sig.String()
}

// notifyContext is signal.NotifyContext, but the context's cause is a
// signalError naming the signal, so that run can exit with its number.
// After the first signal, a second one has its default action: it ends
// the process at once, should the command be slow to stop.
func notifyContext(parent context.Context, sigs ...os.Signal) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	go func() {
		select {
		case s := <-ch:
			signal.Stop(ch)
			cancel(signalError{s.(syscall.Signal)})
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel(nil)
	}
}
