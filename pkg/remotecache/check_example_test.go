package remotecache_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// Check is the gate before a build that has no network: Warm while the
// registry is there, then Check, which never asks it.
func ExampleCheck() {
	ref, _, stop := exampleRegistry()
	defer stop()

	dir, err := os.MkdirTemp("", "layercache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := store.Open(dir)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	refs := []name.Reference{ref}

	rep, err := remotecache.Check(ctx, refs, s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("before warm:", rep.OK(), rep.Images[0].Problems[0].Problem)

	if _, err := remotecache.Warm(ctx, ref, s); err != nil {
		log.Fatal(err)
	}
	stop() // the registry is gone; Check does not need it
	rep, err = remotecache.Check(ctx, refs, s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("after warm: %v, %d blobs verified\n", rep.OK(), rep.Blobs)
	// Output:
	// before warm: false missing
	// after warm: true, 4 blobs verified
}
