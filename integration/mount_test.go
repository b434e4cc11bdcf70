package integration_test

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

// TestMount_AppendToCachedBase is what crane append and ko do: pull a base
// through the cache, add a layer, push to another repository of the same
// registry. The base layers must be mounted, not downloaded or uploaded.
func TestMount_AppendToCachedBase(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	base := pushImage(t, reg, p, "mount/base:v1", 200<<10, 300<<10, 10<<10)
	s := openStore(t)

	img, err := remotecache.Image(base.tag, s, cacheOptions(t)...)
	if err != nil {
		t.Fatalf("Image: %v", err)
	}
	app, err := mutate.AppendLayers(img, regtest.RandomLayer(t, 50<<10))
	if err != nil {
		t.Fatal(err)
	}
	// The new config needs the base's: read it now, so that the push
	// below is all that is counted.
	if _, err := app.RawConfigFile(); err != nil {
		t.Fatal(err)
	}

	p.Reset()
	dst := parseRef(t, p.Addr+"/mount/app:v1")
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	err = remote.Write(dst, app,
		remote.WithContext(t.Context()),
		remote.WithTransport(tr),
		remote.WithRetryBackoff(fastBackoff))
	if err != nil {
		t.Fatalf("remote.Write: %v", err)
	}
	st := p.Stats()
	nBase := int64(len(base.want.layers))
	if st.Mounts < nBase {
		t.Errorf("proxy saw %d mounts, want at least %d (one per base layer): %+v", st.Mounts, nBase, st)
	}
	// The new layer and the new config; no base layer is downloaded
	// for an upload.
	assertStats(t, "push", st, regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: -1, BlobUploads: 2, Mounts: -1})

	// The registry holds the image as built, whole.
	got, err := remote.Image(parseRef(t, reg.Addr+"/mount/app:v1"), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	if d, want := must(got.Digest()), must(app.Digest()); d != want {
		t.Errorf("pushed digest %s, want %s", d, want)
	}
	if err := validate.Image(got); err != nil {
		t.Errorf("validate.Image of the pushed image: %v", err)
	}
}
