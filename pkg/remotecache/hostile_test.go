package remotecache_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// interceptor is a server in front of a test registry whose handler, once
// armed, may answer a request itself (answer returns true) instead of the
// registry. It counts the requests it sees while armed.
type interceptor struct {
	srv    *httptest.Server
	armed  atomic.Bool
	seen   atomic.Int64
	answer func(w http.ResponseWriter, req *http.Request) bool
}

func newInterceptor(t *testing.T, reg *testRegistry, answer func(w http.ResponseWriter, req *http.Request) bool) *interceptor {
	t.Helper()
	i := &interceptor{answer: answer}
	i.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if i.armed.Load() {
			i.seen.Add(1)
			if i.answer(w, req) {
				return
			}
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(i.srv.Close)
	return i
}

func (i *interceptor) host() string { return i.srv.Listener.Addr().String() }

func (i *interceptor) ref(t *testing.T, repoTag string) name.Reference {
	t.Helper()
	return must(name.ParseReference(i.host() + "/" + repoTag))
}

// pullModes are the two ways a pull talks to a registry: anonymously,
// with the early manifest request (eager.go), and through ggcr's
// handshake first, as any WithRemote option makes it.
var pullModes = []struct {
	name string
	opts []remotecache.Option
}{
	{"anonymous", nil},
	{"handshake first", []remotecache.Option{remotecache.WithRemote(remote.WithUserAgent("hostile-test"))}},
}

// A registry that answers, however wrongly, is not unreachable: a
// recorded tag is not resolved from the cache behind its back, and the
// error names the registry.
func TestImage_AnsweringRegistryIsNotUnreachable(t *testing.T) {
	reg := newTestRegistry(t)
	reg.pushImage(t, "test/img:v1", randomImage(t, 71, 1, 512))
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, req *http.Request) bool
	}{
		{"HEAD 200 without Docker-Content-Digest", func(w http.ResponseWriter, req *http.Request) bool {
			if req.Method != http.MethodHead || !strings.Contains(req.URL.Path, "/manifests/v1") {
				return false
			}
			w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
			return true
		}},
		{"captive portal", func(w http.ResponseWriter, req *http.Request) bool {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, "<html>sign in to the wifi</html>")
			return true
		}},
	} {
		for _, mode := range pullModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				i := newInterceptor(t, reg, tc.answer)
				s, _ := openStore(t)
				ref := i.ref(t, "test/img:v1")
				if _, err := remotecache.Image(ref, s, mode.opts...); err != nil {
					t.Fatal(err)
				}
				i.armed.Store(true)
				_, err := remotecache.Image(ref, s, mode.opts...)
				if err == nil || errors.Is(err, remotecache.ErrOffline) {
					t.Fatalf("Image: %v, want an error that is not ErrOffline", err)
				}
				if !strings.Contains(err.Error(), i.host()) {
					t.Errorf("error %q does not name the registry %s", err, i.host())
				}
			})
		}
	}
}

// A reference whose port is out of range is a mistake in the reference,
// not an outage: a tag recorded under it is not resolved offline.
func TestImage_BadPortIsNotOffline(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 72, 1, 512))
	s, _ := openStore(t)
	if _, err := remotecache.Image(fx.ref, s); err != nil {
		t.Fatal(err)
	}
	bad := must(name.ParseReference("127.0.0.1:99999/test/img:v1"))
	raw := must(fx.img.RawManifest())
	if err := s.Tag(t.Context(), bad.Name(), ocispec.Descriptor{
		MediaType: string(types.DockerManifestSchema2), Digest: digest.FromBytes(raw), Size: int64(len(raw)),
	}); err != nil {
		t.Fatal(err)
	}
	_, err := remotecache.Image(bad, s, fast)
	if err == nil || errors.Is(err, remotecache.ErrOffline) {
		t.Fatalf("Image(%s): %v, want an error that is not ErrOffline", bad, err)
	}
}

// The resolve policy decides whether a recorded tag may stand in for a
// registry that cannot be reached (503 from a gateway, here).
func TestImage_ResolvePolicy(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 73, 2, 512))
	for _, tc := range []struct {
		policy   remotecache.ResolvePolicy
		wantErr  bool
		requests bool // the registry is asked at all
	}{
		{remotecache.ResolveFallback, false, true},
		{remotecache.ResolveRemote, true, true},
		{remotecache.ResolveOffline, false, false},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			i := newInterceptor(t, reg, func(w http.ResponseWriter, req *http.Request) bool {
				http.Error(w, "upstream down", http.StatusServiceUnavailable)
				return true
			})
			s, _ := openStore(t)
			ref := i.ref(t, "test/img:v1")
			if _, err := remotecache.Warm(t.Context(), ref, s); err != nil {
				t.Fatal(err)
			}
			i.armed.Store(true)
			img, err := remotecache.Image(ref, s, fast, remotecache.WithResolve(tc.policy))
			if tc.wantErr {
				if err == nil || errors.Is(err, remotecache.ErrOffline) {
					t.Fatalf("Image: %v, want the registry's error", err)
				}
				if !strings.Contains(err.Error(), "503") && !strings.Contains(err.Error(), "Service Unavailable") {
					t.Errorf("error %q does not say what the registry answered", err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if d := must(img.Digest()); d != fx.digest {
					t.Errorf("digest %s, want %s", d, fx.digest)
				}
			}
			if n := i.seen.Load(); (n > 0) != tc.requests {
				t.Errorf("%d requests to the registry; want some: %v", n, tc.requests)
			}
		})
	}
	for _, tc := range []struct{ in, want string }{{"remote", "remote"}, {"fallback", "fallback"}, {"offline", "offline"}} {
		p, err := remotecache.ParseResolvePolicy(tc.in)
		if err != nil || p.String() != tc.want {
			t.Errorf("ParseResolvePolicy(%q) = %v, %v", tc.in, p, err)
		}
	}
	if _, err := remotecache.ParseResolvePolicy("sometimes"); err == nil {
		t.Error("ParseResolvePolicy(sometimes): no error")
	}
}

// chunked serves the blob without a Content-Length (a chunked body),
// with extra appended to it.
func chunked(extra string) fault {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		w.Write(append(rec.Body.Bytes(), extra...))
	}
}

// A layer body longer than its descriptor never hands the caller a byte
// past the descriptor's size, and one whose Content-Length already says
// so is refused before its first byte.
func TestImage_LayerLongerThanDescriptor(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 74, 1, 300))
	h := fx.layers[0]
	size := int64(len(fx.comp[h]))
	evil := strings.Repeat("EVIL", 1000)
	for _, tc := range []struct {
		name    string
		fault   fault
		maxRead int64
	}{
		{"Content-Length says so", mangle(func(b []byte) []byte { return append(b, evil...) }), 0},
		{"chunked", chunked(evil), size},
	} {
		for _, read := range []struct {
			name string
			fn   func(open func() (io.ReadCloser, error)) ([]byte, error)
		}{{"Read", tryReadAll}, {"WriteTo", tryCopyAll}} {
			t.Run(tc.name+"/"+read.name, func(t *testing.T) {
				reg.setFault(h, tc.fault)
				defer reg.clearFaults()
				s, _ := openStore(t)
				img := must(remotecache.Image(fx.ref, s, fast))
				l := must(img.LayerByDigest(h))
				got, err := read.fn(l.Compressed)
				if !errors.Is(err, store.ErrDigestMismatch) {
					t.Fatalf("reading the layer: %v, want ErrDigestMismatch", err)
				}
				if int64(len(got)) > tc.maxRead {
					t.Errorf("the caller got %d bytes before the error, want at most %d", len(got), tc.maxRead)
				}
				if bytes.Contains(got, []byte("EVIL")) {
					t.Error("bytes past the descriptor's size reached the caller")
				}
				assertNotStored(t, s, h)
			})
		}
	}
}

// chunkedHeld serves the blob chunked, and holds back the chunk that
// ends the body until the client goes away: a client that reads only as
// many bytes as it expects never sees the body's end.
func chunkedHeld() fault {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		w.Write(rec.Body.Bytes())
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(time.Minute):
		}
	}
}

// Through the Transport, a blob sent chunked (no Content-Length), which
// ggcr reads up to the descriptor's size and closes without reading EOF,
// is stored: the next pull downloads nothing.
func TestTransport_ChunkedBlobIsCached(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 75, 2, 4096))
	for _, h := range fx.layers {
		reg.setFault(h, chunkedHeld())
	}
	s, _ := openStore(t)
	tr := remotecache.Transport(s, nil)
	for pull := range 2 {
		img := must(remote.Image(fx.ref, remote.WithTransport(tr)))
		for _, l := range must(img.Layers()) {
			if got := readAll(t, l.Compressed); !bytes.Equal(got, fx.comp[must(l.Digest())]) {
				t.Fatalf("pull %d: layer bytes differ", pull)
			}
		}
	}
	for _, h := range fx.layers {
		assertStored(t, s, h)
		if n := reg.gets(h); n != 1 {
			t.Errorf("layer %s: %d GETs over two pulls, want 1", h, n)
		}
	}
}

// A tag whose manifest parses as JSON but is no schema 2 manifest is an
// error, and is not recorded: it must not resolve offline later.
func TestImage_NotAManifestIsNotRecorded(t *testing.T) {
	reg := newTestRegistry(t)
	reg.pushImage(t, "test/img:v1", randomImage(t, 76, 1, 256))
	for _, tc := range []struct {
		name, body, mediaType string
	}{
		{"null", "null", string(types.OCIManifestSchema1)},
		{"empty object", "{}", string(types.OCIManifestSchema1)},
		{"schema 1", `{"schemaVersion":1,"name":"test/img","tag":"v1","fsLayers":[]}`, string(types.DockerManifestSchema1)},
		{"negative layer size", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},` +
			`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":-1,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}]}`,
			string(types.OCIManifestSchema1)},
	} {
		for _, mode := range pullModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				i := newInterceptor(t, reg, func(w http.ResponseWriter, req *http.Request) bool {
					if !strings.HasSuffix(req.URL.Path, "/manifests/v1") {
						return false
					}
					w.Header().Set("Content-Type", tc.mediaType)
					w.Header().Set("Docker-Content-Digest", digest.FromString(tc.body).String())
					w.Header().Set("Content-Length", strconv.Itoa(len(tc.body)))
					if req.Method == http.MethodGet {
						io.WriteString(w, tc.body)
					}
					return true
				})
				i.armed.Store(true)
				s, _ := openStore(t)
				ref := i.ref(t, "test/img:v1")
				img, err := remotecache.Image(ref, s, mode.opts...)
				if err == nil {
					t.Fatalf("Image: an image of %d layers, want an error", len(must(img.Layers())))
				}
				if _, err := s.Resolve(t.Context(), ref.Name()); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("Resolve after the failed pull: %v, want ErrNotFound (the tag must not be recorded)", err)
				}
			})
		}
	}
}

// An index of indexes resolves to the image of the platform, as ggcr's
// remote.Image does, and Warm with all platforms warms the nested images.
func TestImage_NestedIndex(t *testing.T) {
	reg := newTestRegistry(t)
	img := randomImage(t, 77, 2, 512)
	inner := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add:        img,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
	})
	outer := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: inner})
	ref := reg.ref(t, "test/nested:v1")
	if err := remote.WriteIndex(ref, outer); err != nil {
		t.Fatal(err)
	}
	s, _ := openStore(t)
	got, err := remotecache.Image(ref, s)
	if err != nil {
		t.Fatal(err)
	}
	if d := must(got.Digest()); d != must(img.Digest()) {
		t.Errorf("Image of the nested index: %s, want %s", d, must(img.Digest()))
	}
	s2, _ := openStore(t)
	if _, err := remotecache.Warm(t.Context(), ref, s2, remotecache.WithAllPlatforms()); err != nil {
		t.Fatal(err)
	}
	for _, l := range must(img.Layers()) {
		assertStored(t, s2, must(l.Digest()))
	}
}

// A manifest larger than the cache reads is refused before it is read
// whole, on ggcr's path too (an index's child, fetched with ggcr's Get):
// the memory the pull allocates stays far below the manifest's size.
func TestImage_ManifestLimitBoundsMemory(t *testing.T) {
	reg := newTestRegistry(t)
	img := randomImage(t, 78, 1, 256)
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add:        img,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
	})
	ref := reg.ref(t, "test/big:v1")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	child := must(img.Digest()).String()
	const huge = 100 << 20
	for _, tc := range []struct {
		name          string
		contentLength bool
	}{{"Content-Length", true}, {"chunked", false}} {
		for _, mode := range pullModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				i := newInterceptor(t, reg, func(w http.ResponseWriter, req *http.Request) bool {
					if !strings.HasSuffix(req.URL.Path, "/manifests/"+child) {
						return false
					}
					w.Header().Set("Content-Type", string(types.DockerManifestSchema2))
					if tc.contentLength {
						w.Header().Set("Content-Length", strconv.Itoa(huge))
					}
					w.WriteHeader(http.StatusOK)
					io.CopyN(w, spaces{}, huge)
					return true
				})
				i.armed.Store(true)
				s, _ := openStore(t)
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				_, err := remotecache.Image(i.ref(t, "test/big:v1"), s, append(mode.opts, fast)...)
				runtime.ReadMemStats(&after)
				if err == nil || !strings.Contains(err.Error(), "larger than") {
					t.Fatalf("Image: %v, want an error with %q", err, "larger than")
				}
				if grew := after.TotalAlloc - before.TotalAlloc; grew > 48<<20 {
					t.Errorf("the pull allocated %d MiB for a %d MiB manifest it refused", grew>>20, huge>>20)
				}
			})
		}
	}
}

// spaces is an endless reader of spaces.
type spaces struct{}

func (spaces) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = ' '
	}
	return len(b), nil
}

// A zstd frame that declares a window past the limit is refused without
// allocating it.
func TestDecompress_ZstdWindowIsBounded(t *testing.T) {
	// Magic, a frame header with no content size and a window
	// descriptor of 2^29 bytes (exponent 19), then one empty raw block.
	frame := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 19 << 3, 0x01, 0x00, 0x00}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rc, err := remotecache.Decompress(io.NopCloser(bytes.NewReader(frame)))
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("decompressing a frame with a 512 MiB window: no error")
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Errorf("decompressing allocated %d MiB", grew>>20)
	}
}

// A layer whose gzip trailer is wrong fails with the cache's digest
// error, not gzip's own: the blob's last bytes are held back from the
// decompressor once the whole is known to be wrong.
func TestImage_WrongLastBytesFailTheDigestFirst(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 79, 1, 64<<10))
	target := fx.layers[0]
	// The gzip trailer's CRC-32 sits in the blob's last 8 bytes.
	reg.setFault(target, mangle(func(b []byte) []byte { b[len(b)-6] ^= 0xff; return b }))
	s, _ := openStore(t)
	img := must(remotecache.Image(fx.ref, s, fast))
	l := must(img.LayerByDigest(target))
	if _, err := tryReadAll(l.Uncompressed); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("reading the layer uncompressed: %v, want ErrDigestMismatch", err)
	}
	assertNotStored(t, s, target)
}
