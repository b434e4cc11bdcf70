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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
