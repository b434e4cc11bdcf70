package remotecache_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// A server of the distribution API answers a manifest GET with Manifest
// and a blob GET with Blob: the first request of each blob downloads it
// into the cache, the second reads it from there.
func ExampleBlob() {
	ref, blobGets, stop := exampleRegistry()
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

	desc, raw, err := remotecache.Manifest(ctx, ref, s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("manifest:", desc.MediaType, len(raw) == int(desc.Size))
	for range 2 {
		rc, size, err := remotecache.Blob(ctx, ref.Context(), mustLayer(raw), s)
		if err != nil {
			log.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("blob:", n == size, "downloads so far:", blobGets.Load())
	}
	// Output:
	// manifest: application/vnd.docker.distribution.manifest.v2+json true
	// blob: true downloads so far: 1
	// blob: true downloads so far: 1
}

// mustLayer returns the digest of the first layer of the manifest raw.
func mustLayer(raw []byte) v1.Hash {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		log.Fatal(err)
	}
	return m.Layers[0].Digest
}
