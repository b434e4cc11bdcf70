// Package ko_test builds an image with ko's own build and publish
// packages on a base image pulled through layercache (contrib/kocache),
// against CNCF distribution registries run as processes on 127.0.0.1 by
// integration/regtest, with its counting proxies in front of them.
//
// It is a module of its own so that ko's dependencies, and the test's,
// stay out of the root, integration and contrib/kocache modules (see
// ARCHITECTURE.md, "ko").
package ko_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/google/ko/pkg/build"
	"github.com/google/ko/pkg/publish"
	specsv1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/contrib/kocache"
	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

const (
	// helloDir is the main package ko builds: a module of its own, so
	// that its build needs nothing from this one. The test builds a copy.
	helloDir = "testdata/hello"
	// appPath is where ko puts the binary of a package named hello.
	appPath = "/ko-app/hello"
	// greeting is what the binary prints.
	greeting = "hello from a ko image on a cached base\n"
)

// platforms are those of the base index, all of which ko builds.
var platforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64"},
}

// fixture is two registries, each behind a counting proxy: upstream holds
// the base, dest receives most builds.
type fixture struct {
	upstream *regtest.Registry
	up       *regtest.Proxy
	dest     *regtest.Registry
	dp       *regtest.Proxy
	tr       *http.Transport
	// src is a copy of testdata/hello outside the repository, so that
	// the git state ko reads (for its ldflags templates) and the VCS
	// stamp of go build are not this repository's.
	src string

	// base is the base's tag, through the proxy up.
	base    string
	baseIdx v1.ImageIndex
	// baseImages are the images of the base by platform (as
	// Platform.String() gives it).
	baseImages map[string]v1.Image
	// layers and configs are the digests of the base's blobs, all
	// platforms together.
	layers, configs []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		upstream: regtest.Start(t),
		dest:     regtest.Start(t),
		tr: &http.Transport{
			Proxy:               nil, // 127.0.0.1 only, whatever the environment says
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 16,
		},
		baseImages: map[string]v1.Image{},
		src:        t.TempDir(),
	}
	if err := os.CopyFS(f.src, os.DirFS(helloDir)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.tr.CloseIdleConnections)
	f.up = regtest.NewProxy(t, f.upstream.Addr)
	f.dp = regtest.NewProxy(t, f.dest.Addr)

	// Pushed past the proxy, so that it counts only what builds ask for.
	f.baseIdx = regtest.PushIndex(t, f.upstream.Addr+"/base/static:v1", platforms, 192<<10, 64<<10)
	f.base = f.up.Addr + "/base/static:v1"
	im, err := f.baseIdx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		img, err := f.baseIdx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		f.baseImages[d.Platform.String()] = img
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		f.configs = append(f.configs, m.Config.Digest.String())
		for _, l := range m.Layers {
			f.layers = append(f.layers, l.Digest.String())
		}
	}
	return f
}

// build builds testdata/hello with ko for every platform of the base,
// pulled through s with opts, and publishes it with ko to repo
// ("host:port/name"). It returns the published reference, by digest.
func (f *fixture) build(t *testing.T, s *store.Store, repo string, opts ...remotecache.Option) name.Reference {
	t.Helper()
	ctx := t.Context()
	opts = append([]remotecache.Option{remotecache.WithTransport(f.tr)}, opts...)
	getBase := kocache.GetBase(s, kocache.Bases{Default: f.base}, opts...)

	var specs []string
	for _, p := range platforms {
		specs = append(specs, p.String())
	}
	b, err := build.NewGo(ctx, f.src,
		build.WithBaseImages(getBase),
		build.WithPlatforms(specs...),
		build.WithTrimpath(true),
		build.WithDisabledSBOM(),
	)
	if err != nil {
		t.Fatalf("build.NewGo: %v", err)
	}
	ip, err := b.QualifyImport(".")
	if err != nil {
		t.Fatalf("QualifyImport: %v", err)
	}
	if err := b.IsSupportedReference(ip); err != nil {
		t.Fatalf("IsSupportedReference(%s): %v", ip, err)
	}
	res, err := b.Build(ctx, ip)
	if err != nil {
		t.Fatalf("Build(%s): %v", ip, err)
	}

	pub, err := publish.NewDefault(repo,
		publish.WithTransport(f.tr),
		publish.WithAuth(authn.Anonymous),
		publish.Insecure(true),
		// The image goes to repo itself, as with ko's --bare.
		publish.WithNamer(func(base, _ string) string { return base }),
	)
	if err != nil {
		t.Fatalf("publish.NewDefault: %v", err)
	}
	defer pub.Close()
	ref, err := pub.Publish(ctx, res, ip)
	if err != nil {
		t.Fatalf("Publish(%s): %v", ip, err)
	}
	t.Logf("published %s", ref)
	return ref
}

// check reads the image ref names back from reg (past its proxy), checks
// it with validate.Index, and checks that each of its images is the base
// image of its platform with ko's layers on top and ko's entrypoint. It
// runs the binary of this machine's platform, if the image has one.
func (f *fixture) check(t *testing.T, reg *regtest.Registry, ref name.Reference) {
	t.Helper()
	direct, err := name.NewDigest(reg.Addr+"/"+ref.Context().RepositoryStr()+"@"+ref.Identifier(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(direct, remote.WithTransport(f.tr), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("reading back %s: %v", direct, err)
	}
	if err := validate.Index(idx); err != nil {
		t.Errorf("validate.Index(%s): %v", direct, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range im.Manifests {
		plat := d.Platform.String()
		got = append(got, plat)
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("validate.Image(%s, %s): %v", direct, plat, err)
		}
		base, ok := f.baseImages[plat]
		if !ok {
			t.Errorf("image for %s, which the base has not", plat)
			continue
		}
		f.checkOnBase(t, plat, img, base)
	}
	var want []string
	for _, p := range platforms {
		want = append(want, p.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("platforms %v, want %v", got, want)
	}
}

// checkOnBase checks that img is base with ko's layers and config on top,
// and runs its binary if it is for this machine.
func (f *fixture) checkOnBase(t *testing.T, plat string, img, base v1.Image) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	bm, err := base.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) <= len(bm.Layers) {
		t.Fatalf("%s: %d layers, want more than the base's %d", plat, len(m.Layers), len(bm.Layers))
	}
	for i, l := range bm.Layers {
		if m.Layers[i].Digest != l.Digest {
			t.Errorf("%s: layer %d is %s, want the base's %s", plat, i, m.Layers[i].Digest, l.Digest)
		}
	}
	baseDigest, err := base.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Annotations[specsv1.AnnotationBaseImageName]; got != f.base {
		t.Errorf("%s: annotation %s = %q, want %q", plat, specsv1.AnnotationBaseImageName, got, f.base)
	}
	if got := m.Annotations[specsv1.AnnotationBaseImageDigest]; got != baseDigest.String() {
		t.Errorf("%s: annotation %s = %q, want %q", plat, specsv1.AnnotationBaseImageDigest, got, baseDigest)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{appPath}) {
		t.Errorf("%s: entrypoint %q, want %q", plat, cf.Config.Entrypoint, appPath)
	}
	if plat != runtime.GOOS+"/"+runtime.GOARCH {
		return
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	bin := extract(t, layers[len(bm.Layers):], appPath)
	out, err := exec.CommandContext(t.Context(), bin).Output()
	if err != nil {
		t.Fatalf("running %s of the %s image: %v", appPath, plat, err)
	}
	if string(out) != greeting {
		t.Errorf("%s printed %q, want %q", appPath, out, greeting)
	}
}

// extract writes the file at path in the topmost of layers that holds it
// to a temporary file, executable, and returns the file's name.
func extract(t *testing.T, layers []v1.Layer, path string) string {
	t.Helper()
	var data []byte
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if "/"+filepath.Clean(h.Name) == path || filepath.Clean(h.Name) == path {
				var buf bytes.Buffer
				if _, err := io.Copy(&buf, tr); err != nil {
					t.Fatal(err)
				}
				data = buf.Bytes()
			}
		}
		rc.Close()
	}
	if data == nil {
		t.Fatalf("no %s in the image's own layers", path)
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// probes count, at one proxy, the requests that concern each of a set of
// digests: GETs of the blob, uploads committed with it (the PUT or POST
// that carries ?digest=), and mount requests (POST ?mount=).
type probes struct {
	gets, uploads, mounts map[string]*regtest.Injection
}

// probe starts counting at p, from now on, the requests of digests. The
// probes are faults that do nothing (a latency of zero), injected for
// their count; t's cleanup turns them off.
func probe(t *testing.T, p *regtest.Proxy, digests []string) *probes {
	t.Helper()
	pr := &probes{gets: map[string]*regtest.Injection{}, uploads: map[string]*regtest.Injection{}, mounts: map[string]*regtest.Injection{}}
	count := func(match func(*http.Request) bool) *regtest.Injection {
		in := p.Inject(regtest.Latency(0).Only(match))
		t.Cleanup(in.Remove)
		return in
	}
	for _, d := range digests {
		pr.gets[d] = count(func(r *http.Request) bool { return regtest.IsBlobGet(r) && regtest.HasDigest(d)(r) })
		pr.uploads[d] = count(func(r *http.Request) bool {
			return regtest.IsUpload(r) && r.Method != http.MethodPatch && r.URL.Query().Get("digest") == d
		})
		pr.mounts[d] = count(func(r *http.Request) bool {
			return regtest.IsUpload(r) && r.Method == http.MethodPost && r.URL.Query().Get("mount") == d
		})
	}
	return pr
}

// expect checks that each digest's count in m is want.
func expect(t *testing.T, what string, m map[string]*regtest.Injection, want int64) {
	t.Helper()
	for _, d := range slices.Sorted(maps.Keys(m)) {
		if n := m[d].Fired(); n != want {
			t.Errorf("%s %s: %d requests, want %d", what, d, n, want)
		}
	}
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestKoBuild builds and publishes testdata/hello with ko, five times
// over one cache: cold, warm, pushed to the base's own registry, and
// twice with the base's registry down.
func TestKoBuild(t *testing.T) {
	f := newFixture(t)
	s := openStore(t)
	step := func(name string, fn func(t *testing.T)) {
		if !t.Run(name, fn) {
			t.FailNow()
		}
	}
	all := append(slices.Clone(f.layers), f.configs...)

	// The first build fetches each blob of the base once: the configs for
	// the build, the layers for the push, since dest has none of them.
	step("cold", func(t *testing.T) {
		f.up.Reset()
		up := probe(t, f.up, all)
		ref := f.build(t, s, f.dp.Addr+"/app/cold")
		expect(t, "base blob GETs upstream", up.gets, 1)
		f.check(t, f.dest, ref)
	})

	// The second build, pushed to a new repository of dest so that the
	// base's layers are read and uploaded again, downloads no base blob:
	// they come from the cache. Its only request for the base is a HEAD.
	step("warm", func(t *testing.T) {
		f.up.Reset()
		up := probe(t, f.up, all)
		dp := probe(t, f.dp, f.layers)
		ref := f.build(t, s, f.dp.Addr+"/app/warm")
		expect(t, "base blob GETs upstream", up.gets, 0)
		expect(t, "base layer uploads to dest", dp.uploads, 1)
		if st := f.up.Stats(); st.BlobGets != 0 || st.ManifestGets != 0 || st.ManifestHeads != 1 {
			t.Errorf("upstream saw %+v, want no GETs and one HEAD", st)
		}
		f.check(t, f.dest, ref)
	})

	// Pushed to another repository of the base's registry, the base's
	// layers are mounted: neither downloaded nor uploaded.
	step("mount", func(t *testing.T) {
		f.up.Reset()
		up := probe(t, f.up, f.layers)
		ref := f.build(t, s, f.up.Addr+"/app/mounted")
		expect(t, "base layer GETs", up.gets, 0)
		expect(t, "base layer uploads", up.uploads, 0)
		expect(t, "base layer mounts", up.mounts, 1)
		if st := f.up.Stats(); st.BlobUploads == 0 {
			t.Errorf("upstream saw %+v: no upload at all, so ko's own layers did not go through the proxy", st)
		}
		f.check(t, f.upstream, ref)
	})

	// With the base's registry down (its proxy answers 502 Bad Gateway),
	// the tag the cache recorded is used, and every blob of the base
	// comes from the cache, for a push that uploads them all.
	f.upstream.Stop()
	step("registry down", func(t *testing.T) {
		f.up.Reset()
		dp := probe(t, f.dp, f.layers)
		ref := f.build(t, s, f.dp.Addr+"/app/down")
		if st := f.up.Stats(); st.Requests == 0 || st.BlobGets != 0 || st.ManifestGets != 0 {
			t.Errorf("upstream proxy saw %+v, want a failed HEAD of the tag and no GET", st)
		}
		expect(t, "base layer uploads to dest", dp.uploads, 1)
		f.check(t, f.dest, ref)
	})

	// With ResolveOffline the base's registry is not asked at all.
	step("ResolveOffline", func(t *testing.T) {
		f.up.Reset()
		dp := probe(t, f.dp, f.layers)
		ref := f.build(t, s, f.dp.Addr+"/app/offline", remotecache.WithResolve(remotecache.ResolveOffline))
		if st := f.up.Stats(); st.Requests != 0 {
			t.Errorf("upstream proxy saw %+v, want no request", st)
		}
		expect(t, "base layer uploads to dest", dp.uploads, 1)
		f.check(t, f.dest, ref)
	})
}
