package integration_test

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

// TestTransport_ColdThenWarm plugs remotecache.Transport under plain
// remote.Image: the first pull fills the store, the second downloads no
// blob and returns the same bytes.
func TestTransport_ColdThenWarm(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	fx := pushImage(t, reg, p, "adapt/transport:v1", 250<<10, 60<<10)
	s := openStore(t)
	// http.DefaultTransport's settings, on connections of the test's own.
	inner := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(inner.CloseIdleConnections)
	n := int64(len(fx.want.layers))

	for _, tc := range []struct {
		pass string
		ref  string
		want regtest.Stats
	}{
		// By tag, the manifest always comes from the registry; the
		// config and layers once each.
		{"cold", "tag", regtest.Stats{BlobGets: n + 1, BlobBytes: fx.blobBytes, ManifestGets: 1, BlobUploads: 0, Mounts: 0}},
		{"warm", "tag", regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 1, BlobUploads: 0, Mounts: 0}},
		// By digest, the manifest is served from the store as well.
		{"warm", "digest", regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 1, BlobUploads: 0, Mounts: 0}},
		{"warm again", "digest", regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0}},
	} {
		what := tc.pass + " by " + tc.ref
		ref := fx.tag
		if tc.ref == "digest" {
			ref = fx.dig
		}
		p.Reset()
		img, err := remote.Image(ref,
			remote.WithContext(t.Context()),
			remote.WithTransport(remotecache.Transport(s, inner)),
			remote.WithRetryBackoff(fastBackoff))
		if err != nil {
			t.Fatalf("%s: remote.Image: %v", what, err)
		}
		assertPulled(t, what, readImage(t, img), fx.want)
		if err := validate.Image(img); err != nil {
			t.Errorf("%s: validate.Image: %v", what, err)
		}
		assertStats(t, what, p.Stats(), tc.want)
	}
	assertHolds(t, s, fx.blobs(t)...)
	assertStoreSound(t, s)
}

// TestCache_ColdThenWarm wraps remote.Image with ggcr's cache.Image over
// remotecache.Cache: the second pass reads every layer's Compressed
// stream with no blob download.
func TestCache_ColdThenWarm(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	fx := pushImage(t, reg, p, "adapt/cache:v1", 250<<10, 60<<10, 5000)
	s := openStore(t)
	c := remotecache.Cache(s)
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	n := int64(len(fx.want.layers))
	var layerBytes int64
	for _, l := range fx.want.layers {
		layerBytes += l.size
	}

	for _, tc := range []struct {
		pass string
		want regtest.Stats
	}{
		// Each layer once; Compressed needs no config.
		{"cold", regtest.Stats{BlobGets: n, BlobBytes: layerBytes, ManifestGets: 1, BlobUploads: 0, Mounts: 0}},
		{"warm", regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 1, BlobUploads: 0, Mounts: 0}},
	} {
		p.Reset()
		img, err := remote.Image(fx.tag,
			remote.WithContext(t.Context()),
			remote.WithTransport(tr),
			remote.WithRetryBackoff(fastBackoff))
		if err != nil {
			t.Fatalf("%s: remote.Image: %v", tc.pass, err)
		}
		img = cache.Image(img, c)
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		if len(layers) != len(fx.want.layers) {
			t.Fatalf("%s: %d layers, want %d", tc.pass, len(layers), len(fx.want.layers))
		}
		for i, l := range layers {
			h, size, err := hashStream(l.Compressed)
			if err != nil {
				t.Fatalf("%s: layer %d: %v", tc.pass, i, err)
			}
			if want := fx.want.layers[i]; h != want.digest || size != want.size {
				t.Errorf("%s: layer %d: read %s (%d bytes), want %s (%d bytes)", tc.pass, i, h, size, want.digest, want.size)
			}
		}
		assertStats(t, tc.pass, p.Stats(), tc.want)
	}
	for _, l := range fx.want.layers {
		assertHolds(t, s, toDigest(l.digest))
	}
	assertStoreSound(t, s)

	// The cached image is still a valid one, Uncompressed included.
	img, err := remote.Image(fx.tag, remote.WithContext(t.Context()), remote.WithTransport(tr))
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(cache.Image(img, c)); err != nil {
		t.Errorf("validate.Image: %v", err)
	}
}
