package kocache_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/ko/pkg/build"

	"github.com/ocibuild/layercache/contrib/kocache"
	"github.com/ocibuild/layercache/internal/testregistry"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// exampleBase starts ggcr's in-process registry on 127.0.0.1 with a base
// index of two platforms at <host>/base/static:latest.
func exampleBase() (base string, stop func()) {
	srv := testregistry.Serve(nil)
	base = testregistry.Host(srv) + "/base/static:latest"
	var adds []mutate.IndexAddendum
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := random.Image(1024, 2)
		if err != nil {
			log.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch},
		}})
	}
	ref, err := name.ParseReference(base)
	if err != nil {
		log.Fatal(err)
	}
	if err := remote.WriteIndex(ref, mutate.AppendManifests(empty.Index, adds...)); err != nil {
		log.Fatal(err)
	}
	return base, srv.Close
}

// A ko build whose base images come through the cache. Here the base is
// on a registry in the process, and getBase is called as ko's Build calls
// it: ko builds one image per platform of the index it gets, on that
// platform's image.
func Example() {
	base, stop := exampleBase()
	defer stop()
	dir, err := os.MkdirTemp("", "kocache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	// What a ko-based tool adds: a store, and a GetBase over it.
	s, err := store.Open(dir) // a real tool takes dir from cachedir.Dir()
	if err != nil {
		log.Fatal(err)
	}
	getBase := kocache.GetBase(s, kocache.Bases{Default: base},
		remotecache.WithKeychain(authn.DefaultKeychain))
	if _, err := build.NewGo(ctx, ".", build.WithBaseImages(getBase), build.WithPlatforms("all")); err != nil {
		log.Fatal(err)
	}

	ref, res, err := getBase(ctx, "ko://example.com/hello")
	if err != nil {
		log.Fatal(err)
	}
	printBase(ref, res)

	// With the registry gone, the tag the cache recorded still resolves.
	stop()
	getBase = kocache.GetBase(s, kocache.Bases{Default: base}, remotecache.WithResolve(remotecache.ResolveOffline))
	ref, res, err = getBase(ctx, "ko://example.com/hello")
	if err != nil {
		log.Fatal(err)
	}
	printBase(ref, res)
	// Output:
	// base/static:latest: application/vnd.oci.image.index.v1+json, linux/amd64 linux/arm64
	// base/static:latest: application/vnd.oci.image.index.v1+json, linux/amd64 linux/arm64
}

// printBase prints the repository and tag of ref, the media type of res
// and, for an index, the platforms of its images, reading each config as
// ko does.
func printBase(ref name.Reference, res build.Result) {
	mt, err := res.MediaType()
	if err != nil {
		log.Fatal(err)
	}
	var platforms []string
	if idx, ok := res.(v1.ImageIndex); ok {
		im, err := idx.IndexManifest()
		if err != nil {
			log.Fatal(err)
		}
		for _, d := range im.Manifests {
			img, err := idx.Image(d.Digest)
			if err != nil {
				log.Fatal(err)
			}
			if _, err := img.ConfigFile(); err != nil {
				log.Fatal(err)
			}
			platforms = append(platforms, d.Platform.String())
		}
	}
	fmt.Printf("%s:%s: %s, %s\n", ref.Context().RepositoryStr(), ref.Identifier(), mt, strings.Join(platforms, " "))
}
