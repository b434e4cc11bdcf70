// Command buildregistry builds the registry binary that the integration
// tests run (see regtest.Build) and prints its path. CI runs it ahead of the
// tests so that their time limits do not include the first build:
//
//	cd integration && go run ./regtest/cmd/buildregistry
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
	bin, err := regtest.Build(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "buildregistry: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(bin)
}
