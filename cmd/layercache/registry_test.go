package main

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ocibuild/layercache/internal/testregistry"
)

// fixture is an in-process registry (ggcr's pkg/registry behind
// httptest, as crane's own tests do) holding two pushed images:
//
//   - single: one platform (linux/amd64), a config and three random layers,
//     tagged v1 and latest;
//   - multi: an image index of linux/amd64 and linux/arm64, two layers each;
//   - attest: multi's two images and an attestation manifest about the
//     first, as BuildKit writes one (platform unknown/unknown, annotation
//     vnd.docker.reference.type: attestation-manifest).
//
// It counts nothing on the server's side: the scripts judge what a command
// fetched by what it reports, counted by the client and complete when the
// command returns. (A count taken by the server may note a response's last
// write after its client has read it.)
type fixture struct {
	host string       // 127.0.0.1:port
	reg  http.Handler // the registry, which startRegistry serves again

	single     string // ref of the single-platform image
	singleImg  imageBlobSet
	multi      string // ref of the index
	multiIdx   string // digest of the index manifest
	multiAMD64 imageBlobSet
	multiARM64 imageBlobSet
	attest     string // ref of the index with an attestation
	attestIdx  string // its digest
	attestImg  imageBlobSet

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
	f.reg = testregistry.Handler()
	f.host = testregistry.Host(testregistry.Start(t, f.reg))

	var err error
	f.single = f.host + "/test/single:v1"
	img, err := platformImage(3, 32<<10, "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if f.singleImg, err = push(f.single, img); err != nil {
		t.Fatal(err)
	}
	// The same image as :latest, for references that name no tag.
	if _, err = push(strings.TrimSuffix(f.single, ":v1"), img); err != nil {
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

	f.attest = f.host + "/test/attest:v1"
	att, err := attestationImage()
	if err != nil {
		t.Fatal(err)
	}
	attIdx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{
				"vnd.docker.reference.type":   "attestation-manifest",
				"vnd.docker.reference.digest": f.multiAMD64.manifest,
			},
		}},
	)
	if ref, err = name.ParseReference(f.attest); err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, attIdx); err != nil {
		t.Fatal(err)
	}
	if h, err = attIdx.Digest(); err != nil {
		t.Fatal(err)
	}
	f.attestIdx = h.String()
	if f.attestImg, err = blobSet(att); err != nil {
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
		"REGISTRY":        f.host,
		"DEADREG":         f.dead,
		"IMAGE":           f.single,
		"IMAGE_REPO":      strings.TrimSuffix(f.single, ":v1"),
		"IMAGE_DIGEST":    f.singleImg.manifest,
		"IMAGE_CONFIG":    f.singleImg.config,
		"IMAGE_BLOBS":     strconv.Itoa(f.singleImg.blobs()),
		"IMAGE_BYTES":     strconv.FormatInt(f.singleImg.total(), 10),
		"INDEX":           f.multi,
		"INDEX_REPO":      strings.TrimSuffix(f.multi, ":v1"),
		"INDEX_DIGEST":    f.multiIdx,
		"INDEX_AMD64":     f.multiAMD64.manifest,
		"INDEX_ARM64":     f.multiARM64.manifest,
		"INDEX_AMD64_L0":  f.multiAMD64.layers[0],
		"INDEX_ARM64_L0":  f.multiARM64.layers[0],
		"ATTEST":          f.attest,
		"ATTEST_DIGEST":   f.attestIdx,
		"ATTEST_MANIFEST": f.attestImg.manifest,
		"ATTEST_LAYER":    f.attestImg.layers[0],
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

// attestationImage is an attestation manifest as BuildKit writes one: a
// config that says unknown/unknown and one in-toto statement as a layer.
func attestationImage() (v1.Image, error) {
	stmt := static.NewLayer([]byte(`{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[]}`), "application/vnd.in-toto+json")
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), stmt)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "unknown", "unknown"
	return mutate.ConfigFile(img, cf)
}

// startRegistry serves the fixture's registry on a port of its own, until
// stop: a registry that a script can stop while the other scripts go on
// using theirs. Once stopped, its port stays bound, so that no other
// server takes it, and every connection to it, new or kept alive, is
// closed at once, as a registry that went away leaves it. stop may be
// called more than once; shutdown frees the port.
func (f *fixture) startRegistry() (host string, stop, shutdown func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	sl := &stoppableListener{Listener: ln, conns: map[net.Conn]bool{}}
	srv := &http.Server{Handler: f.reg}
	go srv.Serve(sl)
	return ln.Addr().String(), sl.stop, func() { srv.Close() }, nil
}

// stoppableListener is a listener that, once stopped, closes what it
// accepts, and closes the connections it handed out before.
type stoppableListener struct {
	net.Listener
	mu      sync.Mutex
	stopped bool
	conns   map[net.Conn]bool
}

func (l *stoppableListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		stopped := l.stopped
		if !stopped {
			l.conns[c] = true
		}
		l.mu.Unlock()
		if !stopped {
			return c, nil
		}
		c.Close()
	}
}

func (l *stoppableListener) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	for c := range l.conns {
		c.Close()
	}
	l.conns = nil
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
