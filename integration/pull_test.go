package integration_test

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/internal/testhook"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

// TestPull_ImageColdThenWarm pulls an image through remotecache.Image
// twice into one store: the cold pull downloads each blob once, the warm
// pull downloads none and returns the same bytes.
func TestPull_ImageColdThenWarm(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	fx := pushImage(t, reg, p, "pull/img:v1", 300<<10, 1<<20, 7000)
	s := openStore(t)
	nLayers := int64(len(fx.want.layers))

	for _, tc := range []struct {
		pass string
		want regtest.Stats
	}{
		// Each layer and the config once: Uncompressed decompresses the
		// blob Compressed stored, and validate.Image reads the store.
		{"cold", regtest.Stats{BlobGets: nLayers + 1, BlobBytes: fx.blobBytes, ManifestGets: 1, BlobUploads: 0, Mounts: 0}},
		// Nothing: the tag is checked with a HEAD, and everything else,
		// the manifest by digest included, comes from the store.
		{"warm", regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0}},
	} {
		p.Reset()
		img, err := remotecache.Image(fx.tag, s, cacheOptions(t)...)
		if err != nil {
			t.Fatalf("%s: Image: %v", tc.pass, err)
		}
		assertPulled(t, tc.pass, readImage(t, img), fx.want)
		if err := validate.Image(img); err != nil {
			t.Errorf("%s: validate.Image: %v", tc.pass, err)
		}
		assertStats(t, tc.pass, p.Stats(), tc.want)
	}
	assertHolds(t, s, fx.blobs(t)...)
	assertStoreSound(t, s)
}

// TestPull_IndexColdThenWarm does the same with a multi-platform index
// through remotecache.Index.
func TestPull_IndexColdThenWarm(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	platforms := []v1.Platform{
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64", Variant: "v8"},
		{OS: "linux", Architecture: "s390x"},
	}
	const layerSize = 100 << 10
	idx := regtest.PushIndex(t, reg.Addr+"/pull/idx:v1", platforms, layerSize, 2*layerSize)
	ref := parseRef(t, p.Addr+"/pull/idx:v1")
	want := indexExpectations(t, idx)
	s := openStore(t)

	for _, tc := range []struct {
		pass string
		want regtest.Stats
	}{
		// Every image's config and layers once; the index and each image
		// manifest by a manifest GET.
		{"cold", regtest.Stats{BlobGets: want.blobs, BlobBytes: want.blobBytes, ManifestGets: 1 + int64(len(platforms)), BlobUploads: 0, Mounts: 0}},
		{"warm", regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0}},
	} {
		p.Reset()
		got, err := remotecache.Index(ref, s, cacheOptions(t)...)
		if err != nil {
			t.Fatalf("%s: Index: %v", tc.pass, err)
		}
		if d := must(got.Digest()); d != must(idx.Digest()) {
			t.Errorf("%s: index digest %s, want %s", tc.pass, d, must(idx.Digest()))
		}
		im := must(got.IndexManifest())
		if len(im.Manifests) != len(platforms) {
			t.Fatalf("%s: %d manifests, want %d", tc.pass, len(im.Manifests), len(platforms))
		}
		for _, desc := range im.Manifests {
			img, err := got.Image(desc.Digest)
			if err != nil {
				t.Fatalf("%s: image %s: %v", tc.pass, desc.Digest, err)
			}
			assertPulled(t, tc.pass+" "+desc.Platform.String(), readImage(t, img), want.images[desc.Digest])
		}
		if err := validate.Index(got); err != nil {
			t.Errorf("%s: validate.Index: %v", tc.pass, err)
		}
		assertStats(t, tc.pass, p.Stats(), tc.want)
	}
	assertStoreSound(t, s)
}

// indexWant is what pulls of an index must return.
type indexWant struct {
	images    map[v1.Hash]pulled
	blobs     int64 // configs and layers of all images
	blobBytes int64
	// perImage is the number of blobs and bytes of each image, in
	// index order.
	perImage []struct{ blobs, bytes int64 }
}

func indexExpectations(t *testing.T, idx v1.ImageIndex) indexWant {
	t.Helper()
	w := indexWant{images: map[v1.Hash]pulled{}}
	for _, desc := range must(idx.IndexManifest()).Manifests {
		img := must(idx.Image(desc.Digest))
		p := expected(t, img)
		w.images[desc.Digest] = p
		n, b := int64(1+len(p.layers)), int64(len(p.config))
		for _, l := range p.layers {
			b += l.size
		}
		w.blobs += n
		w.blobBytes += b
		w.perImage = append(w.perImage, struct{ blobs, bytes int64 }{n, b})
	}
	return w
}

// TestWarm_Platforms warms one platform of an index, then all of them, and
// checks that each pass downloads exactly what the previous did not, and
// that a warmed index then pulls with no download at all.
func TestWarm_Platforms(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	platforms := []v1.Platform{
		{OS: "linux", Architecture: "arm64", Variant: "v8"},
		{OS: "linux", Architecture: "amd64"}, // the default platform, second on purpose
		{OS: "windows", Architecture: "amd64", OSVersion: "10.0.20348.1"},
	}
	idx := regtest.PushIndex(t, reg.Addr+"/warm/idx:v1", platforms, 64<<10, 128<<10)
	ref := parseRef(t, p.Addr+"/warm/idx:v1")
	want := indexExpectations(t, idx)
	im := must(idx.IndexManifest())
	s := openStore(t)

	amd64 := want.perImage[1]
	for _, tc := range []struct {
		pass string
		opts []remotecache.Option
		want regtest.Stats
		// fetched and cached are the report's blob counts; the
		// manifests count as blobs there.
		fetched, cached int
		platforms       []string
	}{
		// The default platform only: its config and layers.
		{"default platform", nil,
			regtest.Stats{BlobGets: amd64.blobs, BlobBytes: amd64.bytes, ManifestGets: 2, BlobUploads: 0, Mounts: 0},
			2 + int(amd64.blobs), 0, []string{"linux/amd64"}},
		// All platforms: only the two images not warmed yet.
		{"all platforms", []remotecache.Option{remotecache.WithAllPlatforms()},
			regtest.Stats{BlobGets: want.blobs - amd64.blobs, BlobBytes: want.blobBytes - amd64.bytes, ManifestGets: 2, BlobUploads: 0, Mounts: 0},
			2 + int(want.blobs-amd64.blobs), 2 + int(amd64.blobs), []string{"linux/arm64/v8", "linux/amd64", "windows/amd64:10.0.20348.1"}},
		// Again: everything is verified in the cache, nothing fetched.
		{"all platforms again", []remotecache.Option{remotecache.WithAllPlatforms()},
			regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0},
			0, 1 + len(platforms) + int(want.blobs), []string{"linux/arm64/v8", "linux/amd64", "windows/amd64:10.0.20348.1"}},
	} {
		p.Reset()
		rep, err := remotecache.Warm(t.Context(), ref, s, cacheOptions(t, tc.opts...)...)
		if err != nil {
			t.Fatalf("%s: Warm: %v", tc.pass, err)
		}
		assertStats(t, tc.pass, p.Stats(), tc.want)
		if rep.Fetched.Blobs != tc.fetched || rep.Cached.Blobs != tc.cached {
			t.Errorf("%s: report fetched %+v, cached %+v; want %d and %d blobs", tc.pass, rep.Fetched, rep.Cached, tc.fetched, tc.cached)
		}
		if !slices.Equal(rep.Platforms, tc.platforms) {
			t.Errorf("%s: report platforms %q, want %q", tc.pass, rep.Platforms, tc.platforms)
		}
		if rep.Digest != must(idx.Digest()).String() || rep.Ref != ref.Name() {
			t.Errorf("%s: report says %s at %s, want %s at %s", tc.pass, rep.Ref, rep.Digest, ref.Name(), must(idx.Digest()))
		}
		if tc.pass == "default platform" {
			// The other images' blobs are not there yet.
			for i, desc := range im.Manifests {
				if i == 1 {
					continue
				}
				assertLacks(t, s, toDigest(desc.Digest))
			}
		}
	}

	// The ref is recorded with the index's digest.
	desc, err := s.Resolve(t.Context(), ref.Name())
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != must(idx.Digest()).String() {
		t.Errorf("index.json: %s at %s, want %s", ref.Name(), desc.Digest, must(idx.Digest()))
	}

	// The warmed index pulls with no blob download.
	p.Reset()
	got, err := remotecache.Index(ref, s, cacheOptions(t)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(got); err != nil {
		t.Errorf("validate.Index: %v", err)
	}
	for _, desc := range im.Manifests {
		img, err := got.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		assertPulled(t, desc.Platform.String(), readImage(t, img), want.images[desc.Digest])
	}
	assertStats(t, "pull after warm", p.Stats(), regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0})
	assertStoreSound(t, s)
}

// TestWarm_ImageThenPull warms a plain image, and a pull then downloads
// nothing: with registry options (ggcr's handshake first), and anonymous,
// the way the CLI pulls (the manifest request beside the handshake).
func TestWarm_ImageThenPull(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"WithRemote", "anonymous"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			opts := cacheOptions
			if mode == "anonymous" {
				opts = anonymousOptions
			}
			reg := regtest.Start(t)
			p := regtest.NewProxy(t, reg.Addr)
			fx := pushImage(t, reg, p, "warm/img:v1", 200<<10, 50<<10)
			s := openStore(t)

			ctx := t.Context()
			if mode == "anonymous" {
				// The Warm sends its GET by tag beside ggcr's ping. In
				// production it gives the GET up if it has no answer
				// a while after the ping's, and ggcr asks again: two
				// manifest GETs, on a machine busy enough to stall the
				// client's goroutine that long. WithoutEagerGrace
				// waits for the GET's answer however long it takes,
				// and the ping is answered only once the GET has been,
				// so the GET is the Warm's only one.
				gate := regtest.NewGate()
				p.Inject(regtest.HoldUntil(gate).Only(func(r *http.Request) bool { return r.URL.Path == "/v2/" }))
				p.Inject(regtest.OpenAfter(gate).Only(regtest.IsManifestGet))
				// A Warm that sent no GET beside the ping would wait
				// for it forever.
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(testhook.WithoutEagerGrace(ctx), time.Minute)
				defer cancel()
			}
			rep, err := remotecache.Warm(ctx, fx.tag, s, opts(t)...)
			if err != nil {
				t.Fatal(err)
			}
			n := int64(len(fx.want.layers))
			assertStats(t, "warm", p.Stats(), regtest.Stats{BlobGets: n + 1, BlobBytes: fx.blobBytes, ManifestGets: 1, BlobUploads: 0, Mounts: 0})
			if rep.Fetched.Blobs != int(n)+2 || rep.Cached.Blobs != 0 || rep.Offline {
				t.Errorf("report %+v: want %d blobs fetched, none cached, online", rep, n+2)
			}

			p.Reset()
			img, err := remotecache.Image(fx.tag, s, opts(t)...)
			if err != nil {
				t.Fatal(err)
			}
			assertPulled(t, "pull after warm", readImage(t, img), fx.want)
			if err := validate.Image(img); err != nil {
				t.Errorf("validate.Image: %v", err)
			}
			assertStats(t, "pull after warm", p.Stats(), regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0})
			st, err := s.Stats(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			// Warm fetched manifest, config and layers; the pull hit all of them.
			if st.Misses != n+2 || st.Hits < n+2 {
				t.Errorf("store stats %+v: want %d misses and at least %d hits", st, n+2, n+2)
			}
			assertStoreSound(t, s)
		})
	}
}
