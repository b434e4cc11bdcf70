// Command buildtools builds the client binaries that the end-to-end tests
// of layercache serve run (crane and the OCI distribution-spec conformance
// suite, see regtest.BuildTool) and prints their paths. CI runs it ahead of
// the tests so that their time limits do not include the first build:
//
//	cd integration && go run ./regtest/cmd/buildtools
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/ocibuild/layercache/integration/regtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	for _, tool := range []regtest.Tool{regtest.Crane, regtest.Conformance} {
		bin, err := regtest.BuildTool(ctx, tool)
		if err != nil {
			fmt.Fprintf(os.Stderr, "buildtools: %v\n", err)
			os.Exit(1)
		}
		fmt.Println(bin)
	}
}
