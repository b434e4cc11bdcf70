package remotecache_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

func TestImage_ColdThenWarm(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 1, 3, 4096))
	s, _ := openStore(t)

	var wantBytes int64
	for _, h := range fx.layers {
		wantBytes += int64(len(fx.comp[h]))
	}
	wantBytes += int64(len(must(fx.img.RawConfigFile())))

	for _, pass := range []string{"cold", "warm"} {
		reg.reset()
		img, err := remotecache.Image(fx.ref, s, fast)
		if err != nil {
			t.Fatalf("%s: Image: %v", pass, err)
		}
		if err := validate.Image(img); err != nil {
			t.Fatalf("%s: validate.Image: %v", pass, err)
		}
		fx.assertImage(t, img, fx.img)

		gets, n := reg.totalBlobGets()
		switch pass {
		case "cold":
			// Each blob is downloaded once, although validate and
			// assertImage read every layer four times.
			for _, h := range append([]v1.Hash{fx.config}, fx.layers...) {
				if got := reg.gets(h); got != 1 {
					t.Errorf("cold: %d GETs of %s, want 1", got, h)
				}
			}
			if n != wantBytes {
				t.Errorf("cold: registry sent %d blob bytes, want %d", n, wantBytes)
			}
			// A tag the cache never saw: one GET by tag, no HEAD first.
			if got, heads := reg.manifestGetsOf("v1"), reg.heads(); got != 1 || heads != 0 {
				t.Errorf("cold: %d GETs of the manifest by tag and %d HEADs, want 1 and 0", got, heads)
			}
			if got := reg.manifestDigestGets(); got != 0 {
				t.Errorf("cold: %d GETs of the manifest by digest, want 0", got)
			}
		case "warm":
			if gets != 0 || n != 0 {
				t.Errorf("warm: %d blob GETs (%d bytes), want 0", gets, n)
			}
			// A tag the cache recorded: a HEAD, and the manifest from
			// the store.
			if got, heads := reg.manifestGetsOf("v1")+reg.manifestDigestGets(), reg.heads(); got != 0 || heads != 1 {
				t.Errorf("warm: %d GETs of manifests and %d HEADs, want 0 and 1", got, heads)
			}
		}
	}
	assertClean(t, s)
}

func TestIndex_ColdThenWarm(t *testing.T) {
	reg := newTestRegistry(t)
	fx, byPlatform := reg.pushIndex(t, "test/multi:v1", 10)
	s, _ := openStore(t)

	for _, pass := range []string{"cold", "warm"} {
		reg.reset()
		idx, err := remotecache.Index(fx.ref, s, fast)
		if err != nil {
			t.Fatalf("%s: Index: %v", pass, err)
		}
		if err := validate.Index(idx); err != nil {
			t.Fatalf("%s: validate.Index: %v", pass, err)
		}
		if got := must(idx.Digest()); got != fx.digest {
			t.Errorf("%s: Digest() = %s, want %s", pass, got, fx.digest)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(im.Manifests) != len(platforms) {
			t.Fatalf("%s: %d manifests, want %d", pass, len(im.Manifests), len(platforms))
		}
		for _, desc := range im.Manifests {
			child, err := idx.Image(desc.Digest)
			if err != nil {
				t.Fatalf("%s: Image(%s): %v", pass, desc.Digest, err)
			}
			fx.assertImage(t, child, byPlatform[desc.Platform.String()])
		}
		gets, n := reg.totalBlobGets()
		if pass == "warm" {
			if gets != 0 || n != 0 {
				t.Errorf("warm: %d blob GETs (%d bytes), want 0", gets, n)
			}
			if got := reg.manifestDigestGets(); got != 0 {
				t.Errorf("warm: %d GETs of manifests by digest, want 0", got)
			}
		} else if want := len(fx.comp) + len(platforms); gets != want {
			t.Errorf("cold: %d blob GETs, want %d (each layer and config once)", gets, want)
		}
	}
	assertClean(t, s)

	img, err := remotecache.Index(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.Image(v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}); err == nil {
		t.Error("Image of a digest the index does not list: no error")
	}
}

func TestIndex_OfAnImageIsAnError(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 1, 1, 512))
	s, _ := openStore(t)
	if _, err := remotecache.Index(fx.ref, s, fast); err == nil || !strings.Contains(err.Error(), "not an index") {
		t.Errorf("Index of an image: err = %v, want one that says it is not an index", err)
	}
}

func TestImage_Platform(t *testing.T) {
	reg := newTestRegistry(t)
	fx, byPlatform := reg.pushIndex(t, "test/multi:v1", 20)
	s, _ := openStore(t)

	tests := []struct {
		name string
		opts []remotecache.Option
		want string // platform of the image chosen; "" for an error
	}{
		// The default is linux/amd64, as in ggcr's remote.Image.
		{"default", nil, "linux/amd64"},
		{"amd64", []remotecache.Option{remotecache.WithPlatform(platforms[0])}, "linux/amd64"},
		// The variant must match too.
		{"arm64 v8", []remotecache.Option{remotecache.WithPlatform(platforms[1])}, "linux/arm64/v8"},
		{"s390x", []remotecache.Option{remotecache.WithPlatform(platforms[2])}, "linux/s390x"},
		// Not in the index: a clear error naming the platform.
		{"missing", []remotecache.Option{remotecache.WithPlatform(v1.Platform{OS: "windows", Architecture: "amd64"})}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := remotecache.Image(fx.ref, s, append(tc.opts, fast)...)
			if tc.want == "" {
				if err == nil {
					t.Fatal("Image: no error for a platform the index lacks")
				}
				if !strings.Contains(err.Error(), "windows/amd64") || !strings.Contains(err.Error(), "platform") {
					t.Errorf("error %q does not name the missing platform", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := byPlatform[tc.want]
			if got, wantD := must(img.Digest()), must(want.Digest()); got != wantD {
				t.Fatalf("Digest() = %s, want %s (the %s child)", got, wantD, tc.want)
			}
			desc, err := img.(interface {
				Descriptor() (*v1.Descriptor, error)
			}).Descriptor()
			if err != nil {
				t.Fatal(err)
			}
			if desc.Platform == nil || desc.Platform.String() != tc.want {
				t.Errorf("Descriptor().Platform = %v, want %s", desc.Platform, tc.want)
			}
			if err := validate.Image(img); err != nil {
				t.Fatal(err)
			}
			fx.assertImage(t, img, want)
		})
	}
}

// A digest reference that is cached needs no network at all.
func TestImage_DigestRefNeedsNoNetwork(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 2, 2, 1024))
	s, _ := openStore(t)
	dref := fx.ref.Context().Digest(fx.digest.String())

	img, err := remotecache.Image(dref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}
	reg.srv.Close()

	// Either way of giving a transport, it sees no request.
	for _, how := range []string{"WithTransport", "WithRemote(remote.WithTransport)"} {
		ct := &countingTransport{inner: http.DefaultTransport}
		opt := remotecache.WithTransport(ct)
		if how != "WithTransport" {
			opt = remotecache.WithRemote(remote.WithTransport(ct))
		}
		img, err = remotecache.Image(dref, s, opt, fast)
		if err != nil {
			t.Fatalf("%s: Image by digest with the registry gone: %v", how, err)
		}
		if err := validate.Image(img); err != nil {
			t.Fatal(err)
		}
		fx.assertImage(t, img, fx.img)
		if n := ct.count(); n != 0 {
			t.Errorf("%s: %d HTTP requests, want none", how, n)
		}
	}
}

func TestImage_Offline(t *testing.T) {
	tests := []struct {
		name    string
		warmed  bool // the tag was warmed (or pulled) into index.json
		offline bool // WithOffline; else the server is closed
		wantErr error
	}{
		// WithOffline resolves a warmed tag from index.json, with no request.
		{"WithOffline, warmed", true, true, nil},
		// A tag never warmed cannot be resolved offline.
		{"WithOffline, never warmed", false, true, remotecache.ErrOffline},
		// An unreachable registry falls back to index.json too.
		{"unreachable, warmed", true, false, nil},
		// ... and fails for a tag it never saw, with ErrOffline as its
		// doc says ("WithOffline, or the registry cannot be reached").
		{"unreachable, never warmed", false, false, remotecache.ErrOffline},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTestRegistry(t)
			fx := reg.pushImage(t, "test/img:v1", randomImage(t, 3, 2, 1024))
			s, _ := openStore(t)
			if tc.warmed {
				if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err != nil {
					t.Fatal(err)
				}
			} else {
				// Cached blobs but no index.json entry: pulled by
				// digest, so the tag was never seen (a pull by tag
				// records it, as Warm does).
				img, err := remotecache.Image(fx.ref.Context().Digest(fx.digest.String()), s, fast)
				if err != nil {
					t.Fatal(err)
				}
				if err := validate.Image(img); err != nil {
					t.Fatal(err)
				}
			}
			opts := []remotecache.Option{fast}
			ct := &countingTransport{inner: http.DefaultTransport}
			if tc.offline {
				opts = append(opts, remotecache.WithOffline(), remotecache.WithRemote(remote.WithTransport(ct)))
			} else {
				reg.srv.Close()
			}
			logger, logs := newLogger()
			opts = append(opts, remotecache.WithLogger(logger))

			img, err := remotecache.Image(fx.ref, s, opts...)
			if n := ct.count(); n != 0 {
				t.Errorf("%d HTTP requests with WithOffline, want none", n)
			}
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("Image: no error")
				}
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("Image: %v, want an error wrapping %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Image: %v", err)
			}
			if err := validate.Image(img); err != nil {
				t.Fatal(err)
			}
			fx.assertImage(t, img, fx.img)
			w := logs.warnings()
			if len(w) != 1 || !strings.Contains(w[0], "offline") {
				t.Errorf("warnings %q, want one that says offline", w)
			}
		})
	}
}

func TestImage_SelfHeal(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 4, 2, 4096))
	targets := []struct {
		name string
		h    v1.Hash
	}{
		{"layer", fx.layers[1]},
		{"config", fx.config},
		{"manifest", fx.digest},
	}
	for _, target := range targets {
		for _, c := range corruptions {
			t.Run(target.name+"/"+c.name, func(t *testing.T) {
				s, dir := openStore(t)
				img, err := remotecache.Image(fx.ref, s, fast)
				if err != nil {
					t.Fatal(err)
				}
				if err := validate.Image(img); err != nil {
					t.Fatal(err)
				}
				c.apply(t, blobFile(dir, target.h))

				reg.reset()
				logger, logs := newLogger()
				img, err = remotecache.Image(fx.ref, s, fast, remotecache.WithLogger(logger))
				if err != nil {
					t.Fatalf("Image: %v", err)
				}
				fx.assertImage(t, img, fx.img)
				if err := validate.Image(img); err != nil {
					t.Fatal(err)
				}

				gets, _ := reg.totalBlobGets()
				wantGets, wantManifestGets := 1, 0
				if target.name == "manifest" {
					wantGets, wantManifestGets = 0, 1
				}
				if target.name != "manifest" && reg.gets(target.h) != 1 {
					t.Errorf("%d GETs of the %s, want 1", reg.gets(target.h), target.name)
				}
				if gets != wantGets {
					t.Errorf("%d blob GETs in all, want %d: only the damaged blob is fetched", gets, wantGets)
				}
				if got := reg.manifestDigestGets(); got != wantManifestGets {
					t.Errorf("%d GETs of manifests by digest, want %d", got, wantManifestGets)
				}
				assertStored(t, s, target.h)
				assertClean(t, s)
				if len(logs.warnings()) == 0 {
					t.Error("no warning logged about the corrupted blob")
				}
			})
		}
	}
}

func TestImage_BadRegistryBytesNotCached(t *testing.T) {
	tests := []struct {
		name  string
		fault fault
	}{
		// Same length, one byte different: only the digest catches it.
		{"byte flipped", flipByte()},
		// Half the body, with a matching Content-Length.
		{"truncated", truncateBody()},
		// The whole length announced, half sent, connection dropped.
		{"connection cut", cutConnection()},
		// The blob and then some.
		{"extra bytes", extraBytes()},
		// The blob, and then some in a read of its own, with io.EOF.
		{"extra bytes later", extraBytesLater()},
		// No blob at all.
		{"500", status(http.StatusInternalServerError)},
	}
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 5, 2, 8192))
	target := fx.layers[0]
	modes := []struct {
		name     string
		writable bool
		opts     []remotecache.Option
	}{
		// The store Writer's hash is the only one over the body.
		{"writable cache", true, nil},
		// No Writer: the body must still be checked.
		{"unwritable cache", false, nil},
		// A transport of the caller's: ggcr's verifying reader.
		{"caller's transport", true, []remotecache.Option{remotecache.WithRemote(remote.WithTransport(http.DefaultTransport))}},
	}
	// io.ReadAll reads with Read; io.Copy takes the layer's WriteTo, which
	// streams through the store Writer's ReadFrom.
	consumers := []struct {
		name string
		read func(func() (io.ReadCloser, error)) ([]byte, error)
	}{{"Read", tryReadAll}, {"WriteTo", tryCopyAll}}
	for _, tc := range tests {
		for _, mode := range modes {
			for _, consumer := range consumers {
				writable := mode.writable
				tryReadAll := consumer.read
				t.Run(tc.name+"/"+mode.name+"/"+consumer.name, func(t *testing.T) {
					s, dir := openStore(t)
					if !writable {
						breakIngest(t, dir)
					}
					reg.reset()
					reg.setFault(target, tc.fault)
					img, err := remotecache.Image(fx.ref, s, append(mode.opts, fast)...)
					if err != nil {
						t.Fatal(err)
					}
					l, err := img.LayerByDigest(target)
					if err != nil {
						t.Fatal(err)
					}
					if b, err := tryReadAll(l.Compressed); err == nil {
						t.Fatalf("Compressed(): read %d bytes with no error", len(b))
					}
					if b, err := tryReadAll(l.Uncompressed); err == nil {
						t.Fatalf("Uncompressed(): read %d bytes with no error", len(b))
					}
					assertNotStored(t, s, target)
					if writable {
						if litter := ingestLitter(t, dir); len(litter) > 0 {
							t.Errorf("ingest/ holds %v after the failed download", litter)
						}
						// Only a cut leaves bytes worth resuming from;
						// wrong bytes are never kept.
						if p := partials(t, dir); len(p) > 0 && tc.name != "connection cut" {
							t.Errorf("ingest/ keeps the partial download %v of bytes that were wrong", p)
						}
					}

					// The failure poisoned nothing: once the registry is
					// right, the layer reads (and is cached, if it can be).
					reg.clearFaults()
					if got := readAll(t, l.Compressed); !bytes.Equal(got, fx.comp[target]) {
						t.Error("Compressed() after the fault cleared: wrong bytes")
					}
					if !writable {
						assertNotStored(t, s, target)
						return
					}
					assertStored(t, s, target)
					assertClean(t, s)
				})
			}
		}
	}
}

// A consumer whose writes fail part way through a miss (io.Copy into a
// full disk, say) gets its own error; the download is abandoned, not
// cached, and its lock released, so the next read fetches it whole.
func TestImage_WriteToConsumerFails(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 22, 1, 3<<20))
	s, dir := openStore(t)
	img, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	l := must(img.Layers())[0]
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("consumer's disk is full")
	n, err := io.Copy(&failingWriter{after: 1 << 20, err: boom}, rc)
	rc.Close()
	if !errors.Is(err, boom) {
		t.Fatalf("io.Copy: %d bytes, %v; want the consumer's error", n, err)
	}
	assertNotStored(t, s, fx.layers[0])
	if litter := ingestLitter(t, dir); len(litter) > 0 {
		t.Errorf("ingest/ holds %v after the abandoned download", litter)
	}
	if got := readAll(t, l.Compressed); !bytes.Equal(got, fx.comp[fx.layers[0]]) {
		t.Error("Compressed() after the failed copy: wrong bytes")
	}
	assertStored(t, s, fx.layers[0])
}

// failingWriter accepts after bytes, then fails with err.
type failingWriter struct {
	after int64
	n     int64
	err   error
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.after {
		return 0, w.err
	}
	w.n += int64(len(p))
	return len(p), nil
}

// breakIngest replaces ingest/ with a regular file, so that every temp
// and lock file fails with ENOTDIR, whoever runs the test (root ignores
// permission bits).
func breakIngest(t testing.TB, dir string) {
	t.Helper()
	ingest := filepath.Join(dir, layout.IngestDir)
	if err := os.RemoveAll(ingest); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ingest, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A config or manifest the registry damages is refused, and not cached.
func TestImage_BadRegistryConfigNotCached(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 16, 1, 1024))
	tests := []struct {
		name  string
		fault fault
	}{
		// Same length, one byte different.
		{"byte flipped", flipByte()},
		// The config and then some.
		{"extra bytes", extraBytes()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := openStore(t)
			reg.reset()
			reg.setFault(fx.config, tc.fault)
			img, err := remotecache.Image(fx.ref, s, fast)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := img.RawConfigFile(); err == nil {
				t.Fatal("RawConfigFile: no error for damaged bytes")
			}
			assertNotStored(t, s, fx.config)
			if litter := ingestLitter(t, dir); len(litter) > 0 {
				t.Errorf("ingest/ holds %v", litter)
			}
		})
	}
}

// Offline, a blob missing from the cache is ErrOffline, with no request.
func TestImage_OfflineMissingBlob(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 17, 2, 1024))
	s, _ := openStore(t)
	if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		h    v1.Hash
		read func(img v1.Image) error
	}{
		// A layer: Compressed cannot be served.
		{"layer", fx.layers[1], func(img v1.Image) error {
			_, err := tryReadAll(must(img.Layers())[1].Compressed)
			return err
		}},
		// The config: RawConfigFile cannot be served.
		{"config", fx.config, func(img v1.Image) error {
			_, err := img.RawConfigFile()
			return err
		}},
		// The manifest: the image cannot be resolved.
		{"manifest", fx.digest, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(t.Context(), toDigest(tc.h)); err != nil {
				t.Fatal(err)
			}
			reg.reset()
			img, err := remotecache.Image(fx.ref, s, remotecache.WithOffline())
			if tc.read != nil {
				if err != nil {
					t.Fatal(err)
				}
				err = tc.read(img)
			}
			if !errors.Is(err, remotecache.ErrOffline) {
				t.Errorf("got %v, want an error wrapping ErrOffline", err)
			}
			if n := reg.requestCount(); n != 0 {
				t.Errorf("%d requests reached the registry offline", n)
			}
		})
	}
}

func TestImage_EarlyCloseLeavesNothing(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 6, 1, 256<<10))
	s, dir := openStore(t)
	target := fx.layers[0]
	img, err := remotecache.Image(fx.ref, s, fast, remotecache.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	l := must(img.Layers())[0]

	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	assertNotStored(t, s, target)
	if litter := ingestLitter(t, dir); len(litter) > 0 {
		t.Errorf("ingest/ holds %v after an early Close", litter)
	}

	// The early Close released the download lock: this read would
	// otherwise wait forever.
	done := make(chan []byte)
	go func() { b, _ := tryReadAll(l.Compressed); done <- b }()
	select {
	case got := <-done:
		if !bytes.Equal(got, fx.comp[target]) {
			t.Fatal("full read after an early Close: wrong bytes")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("full read after an early Close did not finish: lock not released?")
	}
	assertStored(t, s, target)
	assertClean(t, s)
}

// Eight readers of one missing layer, each through its own Image on one
// store, cause one download.
func TestImage_ConcurrentMissFetchesOnce(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 7, 1, 2<<20))
	s, _ := openStore(t)
	target := fx.layers[0]
	// A slow registry keeps the first download in flight while the
	// others ask.
	reg.setFault(target, delay(200*time.Millisecond))

	const readers = 8
	var ready sync.WaitGroup
	start := make(chan struct{})
	results := make([][]byte, readers)
	errs := make([]error, readers)
	var wg sync.WaitGroup
	for i := range readers {
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := remotecache.Image(fx.ref, s, fast)
			ready.Done()
			if err != nil {
				errs[i] = err
				return
			}
			l, err := img.LayerByDigest(target)
			if err != nil {
				errs[i] = err
				return
			}
			<-start
			results[i], errs[i] = tryReadAll(l.Compressed)
		}()
	}
	ready.Wait()
	close(start)
	wg.Wait()
	for i := range readers {
		if errs[i] != nil {
			t.Errorf("reader %d: %v", i, errs[i])
			continue
		}
		if !bytes.Equal(results[i], fx.comp[target]) {
			t.Errorf("reader %d: %d bytes differ from the layer's", i, len(results[i]))
		}
	}
	if got := reg.gets(target); got != 1 {
		t.Errorf("%d GETs of the layer, want 1", got)
	}
	assertClean(t, s)
}

// A cache that cannot be written still serves hits, and misses come from
// the registry, with one warning.
func TestImage_UnwritableCacheDegrades(t *testing.T) {
	tests := []struct {
		name string
		// break makes writes to the cache fail.
		breakIt func(t *testing.T, dir string)
		root    bool // works as root (permission bits do not stop root)
	}{
		// ingest/ replaced by a file (see breakIngest).
		{"ingest is a file", func(t *testing.T, dir string) { breakIngest(t, dir) }, true},
		// The read-only cache as a CI runner has it: EACCES.
		{"read-only directories", func(t *testing.T, dir string) {
			for _, d := range []string{layout.IngestDir, filepath.Join(layout.BlobsDir, "sha256"), layout.BlobsDir, ""} {
				p := filepath.Join(dir, d)
				if err := os.Chmod(p, 0o555); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.Chmod(p, 0o755) })
			}
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.root && os.Geteuid() == 0 {
				t.Skip("permission bits do not stop root; the ingest-is-a-file case covers root")
			}
			reg := newTestRegistry(t)
			fx := reg.pushImage(t, "test/img:v1", randomImage(t, 8, 3, 4096))
			s, dir := openStore(t)
			// Cache the manifest and the first layer only.
			img, err := remotecache.Image(fx.ref, s, fast)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, must(img.Layers())[0].Compressed)

			// A new process opens the cache, which then turns
			// unwritable (store.Open repairs an ingest/ that is not a
			// directory, so the damage comes after it).
			s, err = store.Open(dir)
			if err != nil {
				t.Fatalf("store.Open: %v", err)
			}
			tc.breakIt(t, dir)
			reg.reset()
			logger, logs := newLogger()
			img, err = remotecache.Image(fx.ref, s, fast, remotecache.WithLogger(logger))
			if err != nil {
				t.Fatal(err)
			}
			if err := validate.Image(img); err != nil {
				t.Fatal(err)
			}
			fx.assertImage(t, img, fx.img)
			if got := reg.gets(fx.layers[0]); got != 0 {
				t.Errorf("%d GETs of the cached layer, want 0", got)
			}
			if got := reg.manifestDigestGets(); got != 0 {
				t.Errorf("%d GETs of the cached manifest, want 0", got)
			}
			for _, h := range append([]v1.Hash{fx.config}, fx.layers[1:]...) {
				if reg.gets(h) == 0 {
					t.Errorf("blob %s: no GET, but it was not cached", h)
				}
				assertNotStored(t, s, h)
			}
			if w := logs.warnings(); len(w) != 1 {
				t.Errorf("%d warnings, want 1:\n%s", len(w), strings.Join(w, "\n"))
			}
			// Warm exists to fill the cache: there, an unwritable
			// cache is an error, not a warning.
			if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err == nil {
				t.Error("Warm into an unwritable cache: no error")
			}
		})
	}
}

func TestImage_RedirectedBlobs(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 9, 2, 4096))
	s, _ := openStore(t)
	for _, h := range append([]v1.Hash{fx.config}, fx.layers...) {
		reg.setFault(h, redirectTo(reg.srv.URL))
	}
	img, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}
	fx.assertImage(t, img, fx.img)
	for _, h := range append([]v1.Hash{fx.config}, fx.layers...) {
		assertStored(t, s, h)
	}
}

func TestImage_Uncompressed(t *testing.T) {
	reg := newTestRegistry(t)
	zl := zstdLayer(t)
	base := randomImage(t, 11, 1, 4096)
	fx := reg.pushImage(t, "test/zstd:v1", appendLayers(t, base, zl))
	s, _ := openStore(t)

	for i, h := range fx.layers {
		t.Run(fmt.Sprintf("layer %d", i), func(t *testing.T) {
			img, err := remotecache.Image(fx.ref, s, fast)
			if err != nil {
				t.Fatal(err)
			}
			l, err := img.LayerByDigest(h)
			if err != nil {
				t.Fatal(err)
			}
			reg.reset()
			// Uncompressed first: the compressed blob is fetched,
			// decompressed, and cached on the way.
			if got := readAll(t, l.Uncompressed); !bytes.Equal(got, fx.uncomp[h]) {
				t.Fatalf("Uncompressed() gave %d bytes that differ from the layer's %d", len(got), len(fx.uncomp[h]))
			}
			if got := reg.gets(h); got != 1 {
				t.Errorf("%d GETs for Uncompressed, want 1", got)
			}
			if got := readAll(t, l.Compressed); !bytes.Equal(got, fx.comp[h]) {
				t.Fatal("Compressed(): wrong bytes")
			}
			if got := reg.gets(h); got != 1 {
				t.Errorf("%d GETs after Uncompressed then Compressed, want 1: reading Uncompressed to the end did not cache the blob", got)
			}
		})
	}
	img, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	fx.assertImage(t, img, fx.img)
	// validate.Image reads every layer with compress/gzip, so it cannot
	// check a zstd layer; it checks the gzip one.
	if err := validate.Layer(must(img.Layers())[0]); err != nil {
		t.Fatal(err)
	}
	if mt := must(must(img.Layers())[1].MediaType()); mt != "application/vnd.oci.image.layer.v1.tar+zstd" {
		t.Errorf("zstd layer media type %s", mt)
	}
}

// A config whose diff ID does not match its layer is the image's fault,
// not the cache's: Uncompressed serves the verified blob's contents, as
// ggcr's remote layers do, and validate.Image reports the image.
func TestImage_DiffIDMismatch(t *testing.T) {
	reg := newTestRegistry(t)
	img := withWrongDiffID(t, randomImage(t, 12, 2, 4096), 1)
	fx := reg.pushImage(t, "test/baddiff:v1", img)
	s, _ := openStore(t)

	ci, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	ls := must(ci.Layers())
	for pass := range 2 { // cold, then from the cache
		for i, l := range ls {
			if got := readAll(t, l.Uncompressed); !bytes.Equal(got, fx.uncomp[fx.layers[i]]) {
				t.Errorf("pass %d: layer %d Uncompressed: wrong bytes", pass, i)
			}
		}
	}
	assertStored(t, s, fx.layers[1])
	if err := validate.Image(ci); err == nil || !strings.Contains(err.Error(), "diff") {
		t.Errorf("validate.Image of an image with a wrong diff ID: %v, want a diff ID mismatch", err)
	}
}

// Pushing a cached base plus a new layer to another repository mounts the
// base layers and uploads only the new layer and the config.
func TestImage_PushMountsBaseLayers(t *testing.T) {
	reg := newTestRegistry(t)
	reg.scope()
	fx := reg.pushImage(t, "test/base:v1", randomImage(t, 13, 3, 4096))
	s, _ := openStore(t)
	base, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range must(base.Layers()) {
		if _, ok := l.(*remote.MountableLayer); !ok {
			t.Fatalf("layer is a %T, want *remote.MountableLayer", l)
		}
	}
	added := randomImage(t, 14, 1, 1024)
	newLayer := must(added.Layers())[0]
	img := appendLayers(t, base, newLayer)

	reg.reset()
	dst := reg.ref(t, "test/app:v1")
	if err := remote.Write(dst, img); err != nil {
		t.Fatal(err)
	}

	uploads, mounts := reg.uploadsAndMounts()
	wantUploads := sortedStrings([]string{must(newLayer.Digest()).String(), must(img.ConfigName()).String()})
	if got := uploads; !equalStrings(got, wantUploads) {
		t.Errorf("uploads %v, want only the new layer and the config %v", got, wantUploads)
	}
	var wantMounts []string
	for _, h := range fx.layers {
		wantMounts = append(wantMounts, h.String())
	}
	if got := mounts; !equalStrings(got, sortedStrings(wantMounts)) {
		t.Errorf("mounts %v, want the base layers %v", got, wantMounts)
	}
	for _, h := range fx.layers {
		if got := reg.gets(h); got != 0 {
			t.Errorf("%d GETs of base layer %s while pushing, want 0: a mounted layer needs no bytes", got, h)
		}
	}

	pushed, err := remote.Image(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(pushed); err != nil {
		t.Fatal(err)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The options are checked where they are set.
func TestImage_BadOptions(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 15, 1, 512))
	s, _ := openStore(t)
	tests := []struct {
		name string
		opt  remotecache.Option
	}{
		// Zero jobs would never make progress.
		{"WithJobs(0)", remotecache.WithJobs(0)},
		// Negative jobs likewise.
		{"WithJobs(-1)", remotecache.WithJobs(-1)},
		// A nil context would panic later, on a layer read.
		//lint:ignore SA1012 a nil context is the point of the row
		{"WithContext(nil)", remotecache.WithContext(nil)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := remotecache.Image(fx.ref, s, tc.opt); err == nil {
				t.Error("Image: no error")
			}
			if _, err := remotecache.Warm(t.Context(), fx.ref, s, tc.opt); err == nil {
				t.Error("Warm: no error")
			}
		})
	}
}

// A pull by tag records the tag, so that it resolves offline later
// without a Warm.
func TestImage_RecordsTag(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 2, 2, 1024))
	s, _ := openStore(t)
	img, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}
	desc, err := s.Resolve(t.Context(), fx.ref.Name())
	if err != nil {
		t.Fatalf("Resolve after a pull by tag: %v", err)
	}
	if got, want := desc.Digest.String(), fx.digest.String(); got != want {
		t.Errorf("recorded digest %s, want %s", got, want)
	}
	reg.srv.Close()
	img, err = remotecache.Image(fx.ref, s, fast, remotecache.WithOffline())
	if err != nil {
		t.Fatalf("offline pull of a tag pulled before: %v", err)
	}
	fx.assertImage(t, img, fx.img)
}

// Closing a layer's reader unread neither hashes the cached blob nor
// starts a download: it counts no hit and no miss.
func TestLayer_CloseUnread(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 2, 2, 1024))
	s, _ := openStore(t)
	img, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	before, err := s.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
	}
	after, err := s.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if after.Hits != before.Hits || after.Misses != before.Misses {
		t.Errorf("unread opens counted: hits %d→%d, misses %d→%d", before.Hits, after.Hits, before.Misses, after.Misses)
	}
	for _, h := range fx.layers {
		if _, err := s.Stat(t.Context(), digest.Digest(h.String())); err == nil {
			t.Errorf("layer %s cached without being read", h)
		}
	}
}

// A manifest fetched by tag is checked against the Docker-Content-Digest
// the registry sent with it, as a HEAD and a GET by digest would check it:
// a body changed on the way is refused, and neither stored nor recorded
// under the tag.
func TestImage_TagManifestCheckedAgainstHeader(t *testing.T) {
	reg := newTestRegistry(t)
	reg.pushImage(t, "test/img:v1", randomImage(t, 21, 1, 1024))
	ref := tagBodyChanged(t, reg, "test/img:v1")
	s, _ := openStore(t)
	if _, err := remotecache.Image(ref, s, fast); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("Image with a manifest that does not match its Docker-Content-Digest: %v, want ErrDigestMismatch", err)
	}
	var stored []string
	if err := s.Walk(t.Context(), func(i store.Info) error { stored = append(stored, i.Digest.String()); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(stored) != 0 {
		t.Errorf("the store kept %v", stored)
	}
	if d, err := s.Resolve(t.Context(), ref.Name()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the tag resolves to %v (%v), want ErrNotFound", d.Digest, err)
	}
}

// With a transport of the caller's, which replaces the one that notes
// Docker-Content-Digest, a manifest fetched by tag is checked with a HEAD,
// and fetched again by digest if it does not match.
func TestImage_TagManifestCheckedWithCallerTransport(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 23, 1, 1024))
	own := remotecache.WithRemote(remote.WithTransport(http.DefaultTransport), remote.WithRetryBackoff(remote.Backoff{Steps: 1}))
	for _, changed := range []bool{false, true} {
		ref := fx.ref
		if changed {
			ref = tagBodyChanged(t, reg, "test/img:v1")
		}
		reg.reset()
		s, _ := openStore(t)
		img, err := remotecache.Image(ref, s, own)
		if err != nil {
			t.Fatalf("changed %v: %v", changed, err)
		}
		if d := must(img.Digest()); d != fx.digest {
			t.Errorf("changed %v: image digest %s, want %s", changed, d, fx.digest)
		}
		byDigest := 0
		if changed {
			byDigest = 1
		}
		if tag, heads, dg := reg.manifestGetsOf("v1"), reg.heads(), reg.manifestDigestGets(); tag != 1 || heads != 1 || dg != byDigest {
			t.Errorf("changed %v: %d GETs by tag, %d HEADs, %d GETs by digest; want 1, 1, %d", changed, tag, heads, dg, byDigest)
		}
	}
}

// A cache that cannot be written cannot record a tag, so it asks for one
// with a HEAD every time, as for a recorded tag, rather than with a GET
// that Docker Hub would count on every pull.
func TestImage_UnwritableCacheResolvesWithHead(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 24, 1, 1024))
	s, dir := openStore(t)
	breakIngest(t, dir)
	for pass := range 2 {
		reg.reset()
		if _, err := remotecache.Image(fx.ref, s, fast); err != nil {
			t.Fatal(err)
		}
		if tag, heads := reg.manifestGetsOf("v1"), reg.heads(); tag != 0 || heads != 1 {
			t.Errorf("pass %d: %d GETs by tag and %d HEADs, want 0 and 1", pass, tag, heads)
		}
	}
}

// tagBodyChanged serves reg through a proxy that adds a byte to the body
// of GETs of the manifest by tag, keeping the registry's headers, and
// returns the reference of tag through it.
func tagBodyChanged(t *testing.T, reg *testRegistry, tag string) name.Reference {
	t.Helper()
	_, suffix, _ := strings.Cut(tag, ":")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, req)
		body := rec.Body.Bytes()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		if req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/manifests/"+suffix) {
			body = append(bytes.TrimRight(body, "\n"), ' ') // the same JSON, other bytes
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/" + tag)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// Goroutines pulling one new tag at once make one GET of its manifest:
// the first fetches it under the tag's lock and records the tag, the
// others then find it recorded and ask with a HEAD.
func TestImage_NewTagFetchedOnce(t *testing.T) {
	// The others wait for the lock as long as the first takes, however
	// busy the machine: past tagWaitMax they would ask without it.
	defer remotecache.SetTagWaitMax(stuck)()
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 25, 2, 4096))
	s, _ := openStore(t)
	const n = 6
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			img, err := remotecache.Image(fx.ref, s, fast)
			if err == nil {
				_, err = img.RawConfigFile()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if tag, heads, dg := reg.manifestGetsOf("v1"), reg.heads(), reg.manifestDigestGets(); tag != 1 || heads != n-1 || dg != 0 {
		t.Errorf("%d pulls: %d GETs by tag, %d HEADs, %d GETs by digest; want 1, %d, 0", n, tag, heads, dg, n-1)
	}
}

// A pull of a new tag waits for whoever fetches it only so long (the
// holder might be stuck), then asks with a HEAD.
func TestImage_NewTagWaitIsBounded(t *testing.T) {
	defer remotecache.SetTagWaitMax(300 * time.Millisecond)()
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 26, 1, 4096))
	s, _ := openStore(t)
	unlock, err := s.LockBlob(t.Context(), remotecache.TagLockKey(fx.ref))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	start := time.Now()
	img, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("resolved after %v, before the wait was over", waited)
	}
	if d := must(img.Digest()); d != fx.digest {
		t.Errorf("digest %s, want %s", d, fx.digest)
	}
	if tag, heads := reg.manifestGetsOf("v1"), reg.heads(); tag != 0 || heads != 1 {
		t.Errorf("%d GETs by tag and %d HEADs, want 0 and 1", tag, heads)
	}
}

// The counters of an Image pull are held by the store (store.Count): the
// pulling process sees them at once, another process once Close wrote
// them, all of them and once.
func TestImage_CountersWrittenByClose(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 3, 3, 2048))
	s, dir := openStore(t)
	img, err := remotecache.Image(fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	fx.assertImage(t, img, fx.img) // reads every layer
	here, err := s.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The manifest, the config and the three layers; reading them again
	// (assertImage does) counts hits.
	if here.Misses != 5 {
		t.Errorf("Stats in the pulling process: %+v, want 5 misses", here)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	there, err := other.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	there.Since, here.Since = time.Time{}, time.Time{}
	if !reflect.DeepEqual(there, here) {
		t.Errorf("Stats in another process after Close: %+v, want %+v", there, here)
	}
}
