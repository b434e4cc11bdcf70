package kocache_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

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

// counts are the requests a test registry answered, by kind.
type counts struct {
	manifestGets, manifestHeads, blobGets int
}

// testRegistry is ggcr's in-memory registry on 127.0.0.1, counting the
// manifest and blob requests it serves.
type testRegistry struct {
	host string
	srv  *httptest.Server

	mu sync.Mutex
	c  counts
}

func startRegistry(t *testing.T) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	reg := testregistry.Handler()
	r.srv = testregistry.Start(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		switch p := req.URL.Path; {
		case strings.Contains(p, "/manifests/") && req.Method == http.MethodGet:
			r.c.manifestGets++
		case strings.Contains(p, "/manifests/") && req.Method == http.MethodHead:
			r.c.manifestHeads++
		case strings.Contains(p, "/blobs/sha256:") && req.Method == http.MethodGet:
			r.c.blobGets++
		}
		r.mu.Unlock()
		reg.ServeHTTP(w, req)
	}))
	r.host = testregistry.Host(r.srv)
	return r
}

// take returns the counts since the last take and starts again from zero.
func (r *testRegistry) take() counts {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.c
	r.c = counts{}
	return c
}

func (r *testRegistry) pushImage(t *testing.T, repoTag string) v1.Image {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r.ref(t, repoTag), img); err != nil {
		t.Fatal(err)
	}
	r.take()
	return img
}

func (r *testRegistry) pushIndex(t *testing.T, repoTag string, platforms ...v1.Platform) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		img, err := random.Image(512, 2)
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	if err := remote.WriteIndex(r.ref(t, repoTag), idx); err != nil {
		t.Fatal(err)
	}
	r.take()
	return idx
}

func (r *testRegistry) ref(t *testing.T, repoTag string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64"}
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// call runs getBase as ko's build does and checks the reference it returns.
func call(t *testing.T, getBase build.GetBase, want string) build.Result {
	t.Helper()
	ref, res, err := getBase(t.Context(), build.StrictScheme+"example.com/app")
	if err != nil {
		t.Fatalf("getBase: %v", err)
	}
	if ref.String() != want {
		t.Errorf("reference %q, want %q", ref, want)
	}
	return res
}

// assertIndex checks that res is the index want, whole.
func assertIndex(t *testing.T, res build.Result, want v1.ImageIndex) {
	t.Helper()
	idx, ok := res.(v1.ImageIndex)
	if !ok {
		t.Fatalf("result is a %T, want a v1.ImageIndex", res)
	}
	assertDigest(t, res, want)
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatalf("image %s of the index: %v", d.Digest, err)
		}
		if _, err := img.ConfigFile(); err != nil {
			t.Fatalf("config of %s: %v", d.Digest, err)
		}
	}
}

// assertImage checks that res is the image want.
func assertImage(t *testing.T, res build.Result, want v1.Image) {
	t.Helper()
	if _, ok := res.(v1.Image); !ok {
		t.Fatalf("result is a %T, want a v1.Image", res)
	}
	assertDigest(t, res, want)
}

func assertDigest(t *testing.T, got build.Result, want interface{ Digest() (v1.Hash, error) }) {
	t.Helper()
	g, err := got.Digest()
	if err != nil {
		t.Fatal(err)
	}
	w, err := want.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if g != w {
		t.Errorf("digest %s, want %s", g, w)
	}
}

func assertCounts(t *testing.T, what string, got, want counts) {
	t.Helper()
	if got != want {
		t.Errorf("%s: registry served %+v, want %+v", what, got, want)
	}
}

// TestGetBase_Index: an index comes back as an index, whole; once the
// tag is recorded, a build costs the registry one HEAD.
func TestGetBase_Index(t *testing.T) {
	r := startRegistry(t)
	want := r.pushIndex(t, "base/static:v1", amd64, arm64)
	base := r.host + "/base/static:v1"
	getBase := kocache.GetBase(openStore(t), kocache.Bases{Default: base})

	assertIndex(t, call(t, getBase, base), want)
	// The index by tag, then two manifests and two configs by digest.
	assertCounts(t, "cold", r.take(), counts{manifestGets: 3, blobGets: 2})
	assertIndex(t, call(t, getBase, base), want)
	assertCounts(t, "warm", r.take(), counts{manifestHeads: 1})
}

// TestGetBase_Image: an image comes back as itself; its first pull
// fetches its manifest twice (the first request is for an index), later
// builds cost one HEAD.
func TestGetBase_Image(t *testing.T) {
	r := startRegistry(t)
	want := r.pushImage(t, "base/img:v1")
	base := r.host + "/base/img:v1"
	getBase := kocache.GetBase(openStore(t), kocache.Bases{Default: base})

	assertImage(t, call(t, getBase, base), want)
	assertCounts(t, "cold", r.take(), counts{manifestGets: 2})
	assertImage(t, call(t, getBase, base), want)
	assertCounts(t, "warm", r.take(), counts{manifestHeads: 1})
}

// TestGetBase_IndexWithoutDefaultPlatform: an index with no linux/amd64
// image (remotecache.Image's default) is an index all the same.
func TestGetBase_IndexWithoutDefaultPlatform(t *testing.T) {
	r := startRegistry(t)
	want := r.pushIndex(t, "base/arm:v1", arm64)
	base := r.host + "/base/arm:v1"
	assertIndex(t, call(t, kocache.GetBase(openStore(t), kocache.Bases{Default: base}), base), want)
}

// TestGetBase_Digest: references by digest, of either kind.
func TestGetBase_Digest(t *testing.T) {
	r := startRegistry(t)
	idx := r.pushIndex(t, "base/static:v1", amd64, arm64)
	img := r.pushImage(t, "base/img:v1")
	s := openStore(t)
	for _, tc := range []struct {
		repo string
		want interface{ Digest() (v1.Hash, error) }
	}{{"base/static", idx}, {"base/img", img}} {
		d, err := tc.want.Digest()
		if err != nil {
			t.Fatal(err)
		}
		base := r.host + "/" + tc.repo + "@" + d.String()
		res := call(t, kocache.GetBase(s, kocache.Bases{Default: base}), base)
		if _, isIndex := tc.want.(v1.ImageIndex); isIndex {
			assertIndex(t, res, idx)
		} else {
			assertImage(t, res, img)
		}
		// By digest, nothing is asked twice.
		r.take()
		call(t, kocache.GetBase(s, kocache.Bases{Default: base}), base)
		assertCounts(t, base+", again", r.take(), counts{})
	}
}

// TestGetBase_TagChangesKind: a recorded tag that now names the other kind
// gives what it names now.
func TestGetBase_TagChangesKind(t *testing.T) {
	r := startRegistry(t)
	base := r.host + "/base/moving:v1"
	getBase := kocache.GetBase(openStore(t), kocache.Bases{Default: base})

	img := r.pushImage(t, "base/moving:v1")
	assertImage(t, call(t, getBase, base), img)
	idx := r.pushIndex(t, "base/moving:v1", amd64, arm64)
	assertIndex(t, call(t, getBase, base), idx)
	img = r.pushImage(t, "base/moving:v1")
	assertImage(t, call(t, getBase, base), img)
}

// TestGetBase_Offline: recorded tags of both kinds resolve with the
// registry gone, by the fallback and with ResolveOffline; a tag never
// pulled is remotecache.ErrOffline.
func TestGetBase_Offline(t *testing.T) {
	r := startRegistry(t)
	idx := r.pushIndex(t, "base/static:v1", amd64, arm64)
	img := r.pushImage(t, "base/img:v1")
	r.pushImage(t, "base/never:v1")
	s := openStore(t)
	idxBase, imgBase, never := r.host+"/base/static:v1", r.host+"/base/img:v1", r.host+"/base/never:v1"
	// Online, as a build reads them: the index's images and configs.
	assertIndex(t, call(t, kocache.GetBase(s, kocache.Bases{Default: idxBase}), idxBase), idx)
	assertImage(t, call(t, kocache.GetBase(s, kocache.Bases{Default: imgBase}), imgBase), img)
	r.srv.Close()

	for _, policy := range []remotecache.ResolvePolicy{remotecache.ResolveFallback, remotecache.ResolveOffline} {
		t.Run(policy.String(), func(t *testing.T) {
			opt := remotecache.WithResolve(policy)
			assertIndex(t, call(t, kocache.GetBase(s, kocache.Bases{Default: idxBase}, opt), idxBase), idx)
			assertImage(t, call(t, kocache.GetBase(s, kocache.Bases{Default: imgBase}, opt), imgBase), img)
			_, _, err := kocache.GetBase(s, kocache.Bases{Default: never}, opt)(t.Context(), "ko://example.com/app")
			if !errors.Is(err, remotecache.ErrOffline) {
				t.Errorf("never pulled: got %v, want an error wrapping remotecache.ErrOffline", err)
			}
		})
	}
}

// TestGetBase_Context: the lazy reads of the base use the context ko
// passed to GetBase.
func TestGetBase_Context(t *testing.T) {
	r := startRegistry(t)
	r.pushImage(t, "base/img:v1")
	base := r.host + "/base/img:v1"
	ctx, cancel := context.WithCancel(t.Context())
	_, res, err := kocache.GetBase(openStore(t), kocache.Bases{Default: base})(ctx, "ko://example.com/app")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := res.(v1.Image).RawConfigFile(); !errors.Is(err, context.Canceled) {
		t.Errorf("config read after the build's context ended: got %v, want context.Canceled", err)
	}
}

func TestGetBase_Errors(t *testing.T) {
	s := openStore(t)
	for _, tc := range []struct {
		name  string
		bases kocache.Bases
		want  string
	}{
		{"no base", kocache.Bases{}, "no base image for ko://example.com/app"},
		{"bad reference", kocache.Bases{Default: "Not A Reference"}, `parsing base image ("Not A Reference")`},
		{"daemon", kocache.Bases{Default: "ko.local/base:v1"}, "local Docker daemon"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := kocache.GetBase(s, tc.bases)(t.Context(), "ko://example.com/app")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestBases_For(t *testing.T) {
	b := kocache.Bases{
		Default: "default",
		Overrides: map[string]string{
			"example.com/Exact/cmd": "exact",
			"example.com/exact/cmd": "lower",
			"example.com/mixed/cmd": "mixed",
			"example.com/empty":     "",
		},
	}
	for ip, want := range map[string]string{
		"ko://example.com/Exact/cmd": "exact",
		"example.com/exact/cmd":      "lower",
		"ko://example.com/MIXED/cmd": "mixed",
		"example.com/empty":          "default",
		"example.com/other":          "default",
	} {
		if got := b.For(ip); got != want {
			t.Errorf("For(%q) = %q, want %q", ip, got, want)
		}
	}
}

// TestGetBase_NameOptions: the base is parsed with the options given, as
// ko parses it with its --insecure-registry.
func TestGetBase_NameOptions(t *testing.T) {
	r := startRegistry(t)
	r.pushImage(t, "base/img:v1")
	base := "base/img:v1"
	ref, _, err := kocache.GetBase(openStore(t), kocache.Bases{
		Default:     base,
		NameOptions: []name.Option{name.WithDefaultRegistry(r.host), name.Insecure},
	})(t.Context(), "ko://example.com/app")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ref.Context().Registry.Scheme(), "http"; got != want {
		t.Errorf("scheme %q, want %q", got, want)
	}
	if got, want := ref.Name(), r.host+"/base/img:v1"; got != want {
		t.Errorf("reference %q, want %q", got, want)
	}
}
