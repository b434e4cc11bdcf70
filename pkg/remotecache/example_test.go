package remotecache_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/internal/testregistry"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// exampleRegistry starts ggcr's in-process registry with an image of two
// layers at <host>/example/app:v1, and counts the blob downloads it serves.
func exampleRegistry() (ref name.Reference, blobGets *atomic.Int64, stop func()) {
	blobGets = new(atomic.Int64)
	reg := testregistry.Handler()
	srv := testregistry.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			blobGets.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	ref, err := name.ParseReference(testregistry.Host(srv) + "/example/app:v1")
	if err != nil {
		log.Fatal(err)
	}
	img, err := random.Image(1024, 2)
	if err != nil {
		log.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		log.Fatal(err)
	}
	return ref, blobGets, srv.Close
}

// readLayers reads every layer of img to the end, as a build would.
func readLayers(img v1.Image) {
	layers, err := img.Layers()
	if err != nil {
		log.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			log.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			log.Fatal(err)
		}
		rc.Close()
	}
}

func ExampleImage() {
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

	for _, pass := range []string{"cold", "warm"} {
		blobGets.Store(0)
		img, err := remotecache.Image(ref, s)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := img.ConfigFile(); err != nil {
			log.Fatal(err)
		}
		readLayers(img)
		fmt.Printf("%s: fetched blobs: %d\n", pass, blobGets.Load())
	}
	// Output:
	// cold: fetched blobs: 3
	// warm: fetched blobs: 0
}

func ExampleCache() {
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

	for _, pass := range []string{"cold", "warm"} {
		blobGets.Store(0)
		img, err := remote.Image(ref)
		if err != nil {
			log.Fatal(err)
		}
		// Where code had cache.NewFilesystemCache(dir):
		img = cache.Image(img, remotecache.Cache(s))
		readLayers(img)
		fmt.Printf("%s: fetched layers: %d\n", pass, blobGets.Load())
	}
	// Output:
	// cold: fetched layers: 2
	// warm: fetched layers: 0
}

func ExampleTransport() {
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
	tr := remotecache.Transport(s, remote.DefaultTransport)

	for _, pass := range []string{"cold", "warm"} {
		blobGets.Store(0)
		img, err := remote.Image(ref, remote.WithTransport(tr))
		if err != nil {
			log.Fatal(err)
		}
		if _, err := img.ConfigFile(); err != nil {
			log.Fatal(err)
		}
		readLayers(img)
		fmt.Printf("%s: fetched blobs: %d\n", pass, blobGets.Load())
	}
	// Output:
	// cold: fetched blobs: 3
	// warm: fetched blobs: 0
}
