package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fixture is an in-process registry (ggcr's pkg/registry behind
// httptest, as crane's own tests do) holding two pushed images:
//
//   - single: one platform (linux/amd64), a config and three random layers;
//   - multi: an image index of linux/amd64 and linux/arm64, two layers each.
//
// It counts nothing on the server's side: the scripts judge what a command
// fetched by what it reports, counted by the client and complete when the
// command returns. (A count taken by the server may note a response's last
// write after its client has read it.)
type fixture struct {
	host string // 127.0.0.1:port

	single     string // ref of the single-platform image
	singleImg  imageBlobSet
	multi      string // ref of the index
	multiIdx   string // digest of the index manifest
	multiAMD64 imageBlobSet
	multiARM64 imageBlobSet

	// dead is 127.0.0.1:port of a port that was listened on and closed:
	// a registry that refuses connections.
	dead string
}

// imageBlobSet holds the digests and sizes of one image's blobs.
type imageBlobSet struct {
	manifest string
	config   string
	layers   []string
	sizes    map[string]int64 // by digest, of every blob above
}

// total is the bytes of the image's manifest, config and layers.
func (b imageBlobSet) total() int64 {
	var n int64
	for _, s := range b.sizes {
		n += s
	}
	return n
}

// blobs is the number of blobs (manifest, config, layers).
func (b imageBlobSet) blobs() int { return len(b.sizes) }

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	f.host = strings.TrimPrefix(srv.URL, "http://")

	var err error
	f.single = f.host + "/test/single:v1"
	img, err := platformImage(3, 32<<10, "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if f.singleImg, err = push(f.single, img); err != nil {
		t.Fatal(err)
	}

	f.multi = f.host + "/test/multi:v1"
	amd, err := platformImage(2, 16<<10, "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	arm, err := platformImage(2, 16<<10, "linux", "arm64")
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	), types.DockerManifestList)
	ref, err := name.ParseReference(f.multi)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	h, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	f.multiIdx = h.String()
	if f.multiAMD64, err = blobSet(amd); err != nil {
		t.Fatal(err)
	}
	if f.multiARM64, err = blobSet(arm); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.dead = ln.Addr().String()
	ln.Close()
	return f
}

// env is the fixture as environment variables for scripts.
func (f *fixture) env() map[string]string {
	e := map[string]string{
		"REGISTRY":       f.host,
		"DEADREG":        f.dead,
		"IMAGE":          f.single,
		"IMAGE_REPO":     strings.TrimSuffix(f.single, ":v1"),
		"IMAGE_DIGEST":   f.singleImg.manifest,
		"IMAGE_CONFIG":   f.singleImg.config,
		"IMAGE_BLOBS":    strconv.Itoa(f.singleImg.blobs()),
		"IMAGE_BYTES":    strconv.FormatInt(f.singleImg.total(), 10),
		"INDEX":          f.multi,
		"INDEX_REPO":     strings.TrimSuffix(f.multi, ":v1"),
		"INDEX_DIGEST":   f.multiIdx,
		"INDEX_AMD64":    f.multiAMD64.manifest,
		"INDEX_ARM64":    f.multiARM64.manifest,
		"INDEX_AMD64_L0": f.multiAMD64.layers[0],
		"INDEX_ARM64_L0": f.multiARM64.layers[0],
	}
	for i, l := range f.singleImg.layers {
		e[fmt.Sprintf("IMAGE_LAYER%d", i)] = l
		e[fmt.Sprintf("IMAGE_LAYER%d_SIZE", i)] = strconv.FormatInt(f.singleImg.sizes[l], 10)
	}
	return e
}

// platformImage is a random image whose config names its platform.
func platformImage(layers, size int64, os, arch string) (v1.Image, error) {
	img, err := random.Image(size, layers)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = os, arch
	return mutate.ConfigFile(img, cf)
}

func push(ref string, img v1.Image) (imageBlobSet, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return imageBlobSet{}, err
	}
	if err := remote.Write(r, img); err != nil {
		return imageBlobSet{}, err
	}
	return blobSet(img)
}

func blobSet(img v1.Image) (imageBlobSet, error) {
	b := imageBlobSet{sizes: map[string]int64{}}
	h, err := img.Digest()
	if err != nil {
		return b, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return b, err
	}
	m, err := img.Manifest()
	if err != nil {
		return b, err
	}
	b.manifest = h.String()
	b.sizes[b.manifest] = int64(len(raw))
	b.config = m.Config.Digest.String()
	b.sizes[b.config] = m.Config.Size
	for _, l := range m.Layers {
		b.layers = append(b.layers, l.Digest.String())
		b.sizes[l.Digest.String()] = l.Size
	}
	return b, nil
}
