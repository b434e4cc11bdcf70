package remotecache_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

func TestTransport_ColdThenWarm(t *testing.T) {
	reg := newTestRegistry(t)
	img := reg.pushImage(t, "test/img:v1", randomImage(t, 60, 3, 4096))
	idx, byPlatform := reg.pushIndex(t, "test/multi:v1", 61)
	amd64 := byPlatform["linux/amd64"]

	tests := []struct {
		name string
		ref  name.Reference
		fx   *fixture
		want v1.Image
	}{
		// The manifest comes by tag, every time; blobs from the cache.
		{"tag of an image", img.ref, img, img.img},
		// The manifest by digest is cached too.
		{"digest of an image", img.ref.Context().Digest(img.digest.String()), img, img.img},
		// The index by tag, the platform's manifest by digest.
		{"tag of an index", idx.ref, idx, amd64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openStore(t)
			tr := remotecache.Transport(s, http.DefaultTransport)
			for _, pass := range []string{"cold", "warm"} {
				reg.reset()
				ri, err := remote.Image(tc.ref, remote.WithTransport(tr))
				if err != nil {
					t.Fatalf("%s: remote.Image: %v", pass, err)
				}
				if err := validate.Image(ri); err != nil {
					t.Fatalf("%s: validate.Image: %v", pass, err)
				}
				tc.fx.assertImage(t, ri, tc.want)
				gets, n := reg.totalBlobGets()
				mgets := reg.manifestDigestGets()
				if pass == "cold" && gets == 0 {
					t.Fatal("cold: no blob GETs reached the registry")
				}
				if pass == "warm" && (gets != 0 || n != 0 || mgets != 0) {
					t.Errorf("warm: %d blob GETs (%d bytes) and %d manifest-by-digest GETs, want none", gets, n, mgets)
				}
			}
			assertStored(t, s, must(tc.want.ConfigName()))
			for _, h := range layerDigests(tc.want) {
				assertStored(t, s, h)
			}
			assertClean(t, s)
		})
	}
}

// A cached answer looks like the registry's: status, headers and body.
func TestTransport_CachedResponse(t *testing.T) {
	reg := newTestRegistry(t)
	img := reg.pushImage(t, "test/img:v1", randomImage(t, 62, 1, 4096))
	idx, _ := reg.pushIndex(t, "test/multi:v1", 63)
	s, _ := openStore(t)
	tr := remotecache.Transport(s, http.DefaultTransport)

	layer := img.layers[0]
	tests := []struct {
		name      string
		path      string
		body      []byte
		mediaType string
		digest    v1.Hash
	}{
		{"image manifest", "/v2/test/img/manifests/" + img.digest.String(), must(img.img.RawManifest()), string(types.DockerManifestSchema2), img.digest},
		{"index", "/v2/test/multi/manifests/" + idx.digest.String(), indexManifest(t, idx), string(types.OCIImageIndex), idx.digest},
		{"blob", "/v2/test/img/blobs/" + layer.String(), img.comp[layer], "application/octet-stream", layer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			get := func() *http.Response {
				req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, reg.srv.URL+tc.path, nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Accept", string(types.DockerManifestSchema2)+","+string(types.OCIImageIndex))
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				return resp
			}
			// Cold: from the registry, through the cache.
			resp := get()
			cold, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.Equal(cold, tc.body) {
				t.Fatalf("cold GET: %v, %d bytes, want the %d bytes", err, len(cold), len(tc.body))
			}
			reg.reset()
			resp = get()
			defer resp.Body.Close()
			if n := reg.requestCount(); n != 0 {
				t.Errorf("warm GET: %d requests reached the registry", n)
			}
			warm, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d, want 200", resp.StatusCode)
			}
			if !bytes.Equal(warm, tc.body) {
				t.Errorf("body %d bytes, want the %d bytes", len(warm), len(tc.body))
			}
			checks := []struct{ header, want string }{
				{"Content-Type", tc.mediaType},
				{"Content-Length", strconv.Itoa(len(tc.body))},
				{"Docker-Content-Digest", tc.digest.String()},
			}
			for _, c := range checks {
				if got := resp.Header.Get(c.header); got != c.want {
					t.Errorf("%s: %q, want %q", c.header, got, c.want)
				}
			}
			if resp.ContentLength != int64(len(tc.body)) {
				t.Errorf("ContentLength %d, want %d", resp.ContentLength, len(tc.body))
			}
		})
	}
}

func indexManifest(t testing.TB, fx *fixture) []byte {
	t.Helper()
	idx, err := remote.Index(fx.ref)
	if err != nil {
		t.Fatal(err)
	}
	return must(idx.RawManifest())
}

// Registries that redirect blob GETs to storage still get them cached.
func TestTransport_Redirects(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 64, 2, 4096))
	// A second host serving the same storage, as S3 or a CDN would.
	storage := httptest.NewServer(reg)
	t.Cleanup(storage.Close)

	tests := []struct {
		name string
		base string
	}{
		// A path outside /v2/ on the registry itself.
		{"same host", reg.srv.URL},
		// Another host.
		{"other host", storage.URL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openStore(t)
			tr := remotecache.Transport(s, http.DefaultTransport)
			for _, pass := range []string{"cold", "warm"} {
				reg.reset()
				for _, h := range append([]v1.Hash{fx.config}, fx.layers...) {
					reg.setFault(h, redirectTo(tc.base))
				}
				ri, err := remote.Image(fx.ref, remote.WithTransport(tr))
				if err != nil {
					t.Fatal(err)
				}
				if err := validate.Image(ri); err != nil {
					t.Fatalf("%s: validate.Image: %v", pass, err)
				}
				fx.assertImage(t, ri, fx.img)
				storageGets := reg.storageGetCount()
				gets, _ := reg.totalBlobGets()
				switch pass {
				case "cold":
					if storageGets == 0 {
						t.Fatal("cold: no GET reached the storage: the redirect was not exercised")
					}
					for _, h := range append([]v1.Hash{fx.config}, fx.layers...) {
						assertStored(t, s, h)
					}
				case "warm":
					if gets != 0 || storageGets != 0 {
						t.Errorf("warm: %d blob GETs and %d storage GETs, want none", gets, storageGets)
					}
				}
			}
			assertClean(t, s)
		})
	}
}

// What the transport does not cache goes to the registry untouched, even
// when the cache holds the blob.
func TestTransport_PassesThrough(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 65, 1, 4096))
	s, _ := openStore(t)
	tr := remotecache.Transport(s, http.DefaultTransport)
	if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err != nil {
		t.Fatal(err)
	}
	layer := fx.layers[0]
	tests := []struct {
		name       string
		method     string
		path       string
		header     http.Header
		wantStatus int
	}{
		// Existence checks must see the registry, not the cache.
		{"HEAD of a blob", http.MethodHead, "/v2/test/img/blobs/" + layer.String(), nil, http.StatusOK},
		{"HEAD of a manifest", http.MethodHead, "/v2/test/img/manifests/" + fx.digest.String(), nil, http.StatusOK},
		// A tag moves: never served from the cache.
		{"GET of a tag", http.MethodGet, "/v2/test/img/manifests/v1", nil, http.StatusOK},
		// A range is part of a blob, which the cache does not serve.
		{"GET with Range", http.MethodGet, "/v2/test/img/blobs/" + layer.String(), http.Header{"Range": {"bytes=0-9"}}, http.StatusPartialContent},
		// Not the distribution API.
		{"GET of /v2/", http.MethodGet, "/v2/", nil, http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg.reset()
			req, err := http.NewRequestWithContext(t.Context(), tc.method, reg.srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header[k] = v
			}
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if n := reg.requestCount(); n != 1 {
				t.Errorf("%d requests reached the registry, want 1", n)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
		})
	}
}

func TestTransport_BadBytesNotCached(t *testing.T) {
	tests := []struct {
		name  string
		fault fault
	}{
		// Same length, one byte different.
		{"byte flipped", flipByte()},
		// Half the body, with a matching Content-Length.
		{"truncated", truncateBody()},
		// Half the body, then the connection drops.
		{"connection cut", cutConnection()},
		// The blob and then some.
		{"extra bytes", extraBytes()},
	}
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 66, 1, 8192))
	target := fx.layers[0]
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := openStore(t)
			tr := remotecache.Transport(s, http.DefaultTransport)
			reg.reset()
			reg.setFault(target, tc.fault)
			ri, err := remote.Image(fx.ref, remote.WithTransport(tr), remote.WithRetryBackoff(remote.Backoff{Steps: 1}))
			if err != nil {
				t.Fatal(err)
			}
			l, err := ri.LayerByDigest(target)
			if err != nil {
				t.Fatal(err)
			}
			if b, err := tryReadAll(l.Compressed); err == nil {
				t.Fatalf("Compressed(): %d bytes, no error", len(b))
			}
			assertNotStored(t, s, target)
			if litter := ingestLitter(t, dir); len(litter) > 0 {
				t.Errorf("ingest/ holds %v", litter)
			}
		})
	}
}

// A corrupted cached blob or manifest is fetched again by the next GET.
func TestTransport_SelfHeal(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 67, 2, 4096))
	dref := fx.ref.Context().Digest(fx.digest.String())
	targets := []struct {
		name string
		h    v1.Hash
	}{
		{"layer", fx.layers[0]},
		{"config", fx.config},
		{"manifest", fx.digest},
	}
	for _, target := range targets {
		for _, c := range corruptions {
			t.Run(target.name+"/"+c.name, func(t *testing.T) {
				s, dir := openStore(t)
				tr := remotecache.Transport(s, http.DefaultTransport)
				ri, err := remote.Image(dref, remote.WithTransport(tr))
				if err != nil {
					t.Fatal(err)
				}
				if err := validate.Image(ri); err != nil {
					t.Fatal(err)
				}
				c.apply(t, blobFile(dir, target.h))

				reg.reset()
				ri, err = remote.Image(dref, remote.WithTransport(tr))
				if err != nil {
					t.Fatal(err)
				}
				if err := validate.Image(ri); err != nil {
					t.Fatal(err)
				}
				fx.assertImage(t, ri, fx.img)
				gets, _ := reg.totalBlobGets()
				refetched := gets + reg.manifestDigestGets()
				if refetched != 1 {
					t.Errorf("%d GETs of blobs and manifests, want 1: the damaged one only", refetched)
				}
				assertStored(t, s, target.h)
				assertClean(t, s)
			})
		}
	}
}

// Concurrent GETs of one missing blob through one store cause one download.
func TestTransport_ConcurrentMissFetchesOnce(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 68, 1, 1<<20))
	s, _ := openStore(t)
	target := fx.layers[0]
	reg.setFault(target, delay(200*time.Millisecond))

	const readers = 8
	var wg sync.WaitGroup
	start := make(chan struct{})
	results := make([][]byte, readers)
	errs := make([]error, readers)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Separate transports on one store, as separate tools would have.
			tr := remotecache.Transport(s, http.DefaultTransport)
			ri, err := remote.Image(fx.ref, remote.WithTransport(tr))
			if err != nil {
				errs[i] = err
				return
			}
			l, err := ri.LayerByDigest(target)
			if err != nil {
				errs[i] = err
				return
			}
			<-start
			results[i], errs[i] = tryReadAll(l.Compressed)
		}()
	}
	close(start)
	wg.Wait()
	for i := range readers {
		if errs[i] != nil {
			t.Errorf("reader %d: %v", i, errs[i])
		} else if !bytes.Equal(results[i], fx.comp[target]) {
			t.Errorf("reader %d: wrong bytes", i)
		}
	}
	if got := reg.gets(target); got != 1 {
		t.Errorf("%d GETs of the layer, want 1", got)
	}
	assertClean(t, s)
}

// A caller that closes a body early leaves nothing behind, and releases
// the download for the next caller.
func TestTransport_EarlyCloseLeavesNothing(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 69, 1, 256<<10))
	s, dir := openStore(t)
	target := fx.layers[0]
	tr := remotecache.Transport(s, http.DefaultTransport)
	get := func() *http.Response {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, reg.srv.URL+"/v2/test/img/blobs/"+target.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := get()
	if _, err := io.ReadFull(resp.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	assertNotStored(t, s, target)
	if litter := ingestLitter(t, dir); len(litter) > 0 {
		t.Errorf("ingest/ holds %v after an early Close", litter)
	}
	done := make(chan []byte)
	go func() {
		resp := get()
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- b
	}()
	select {
	case b := <-done:
		if !bytes.Equal(b, fx.comp[target]) {
			t.Fatal("full GET after an early Close: wrong bytes")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("full GET after an early Close did not finish: lock not released?")
	}
	assertStored(t, s, target)
}
