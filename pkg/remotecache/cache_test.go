package remotecache_test

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"runtime"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// testCacheContract is the part of ggcr's cache.Cache behaviour that
// code swapping cache.NewFilesystemCache for remotecache.Cache relies on.
// It runs against both.
func testCacheContract(t *testing.T, newCache func(t *testing.T) cache.Cache) {
	img := randomImage(t, 50, 2, 8192)
	ls := must(img.Layers())

	t.Run("Get of an absent layer is ErrNotFound", func(t *testing.T) {
		c := newCache(t)
		if _, err := c.Get(must(ls[0].Digest())); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("Get: %v, want cache.ErrNotFound", err)
		}
	})

	t.Run("Put, consume Compressed, Get", func(t *testing.T) {
		c := newCache(t)
		l := ls[0]
		h := must(l.Digest())
		want := readAll(t, l.Compressed)
		put, err := c.Put(l)
		if err != nil {
			t.Fatal(err)
		}
		if got := must(put.Digest()); got != h {
			t.Errorf("Put(l).Digest() = %s, want %s", got, h)
		}
		if got := readAll(t, put.Compressed); !bytes.Equal(got, want) {
			t.Fatal("Compressed() of the layer Put returned: wrong bytes")
		}
		got, err := c.Get(h)
		if err != nil {
			t.Fatalf("Get after consuming the layer: %v", err)
		}
		if d := must(got.Digest()); d != h {
			t.Errorf("Get(h).Digest() = %s, want %s", d, h)
		}
		if b := readAll(t, got.Compressed); !bytes.Equal(b, want) {
			t.Error("Get(h).Compressed(): bytes differ from the layer's")
		}
		if b, want := readAll(t, got.Uncompressed), readAll(t, l.Uncompressed); !bytes.Equal(b, want) {
			t.Error("Get(h).Uncompressed(): bytes differ from the layer's")
		}
		if d, want := must(got.DiffID()), must(l.DiffID()); d != want {
			t.Errorf("Get(h).DiffID() = %s, want %s", d, want)
		}
	})

	t.Run("Delete, then Get is ErrNotFound", func(t *testing.T) {
		c := newCache(t)
		l := ls[1]
		h := must(l.Digest())
		put, err := c.Put(l)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, put.Compressed)
		if _, err := c.Get(h); err != nil {
			t.Fatalf("Get before Delete: %v", err)
		}
		if err := c.Delete(h); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if _, err := c.Get(h); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("Get after Delete: %v, want cache.ErrNotFound", err)
		}
	})
}

func TestCache_Contract(t *testing.T) {
	impls := []struct {
		name     string
		newCache func(t *testing.T) cache.Cache
	}{
		// ggcr's own, the behaviour to match.
		{"ggcr filesystem cache", func(t *testing.T) cache.Cache {
			return cache.NewFilesystemCache(filepath.Join(t.TempDir(), "fscache"))
		}},
		{"remotecache.Cache", func(t *testing.T) cache.Cache {
			s, _ := openStore(t)
			return remotecache.Cache(s)
		}},
	}
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) { testCacheContract(t, impl.newCache) })
	}
}

func TestCache_ImageColdThenWarm(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 51, 3, 4096))
	s, _ := openStore(t)
	c := remotecache.Cache(s)

	for _, pass := range []string{"cold", "warm"} {
		reg.reset()
		ri, err := remote.Image(fx.ref)
		if err != nil {
			t.Fatal(err)
		}
		img := cache.Image(ri, c)
		if err := validate.Image(img); err != nil {
			t.Fatalf("%s: validate.Image: %v", pass, err)
		}
		fx.assertImage(t, img, fx.img)
		for _, h := range fx.layers {
			want := 0
			if pass == "cold" {
				want = 1
			}
			if got := reg.gets(h); got != want {
				t.Errorf("%s: %d GETs of layer %s, want %d", pass, got, h, want)
			}
			assertStored(t, s, h)
		}
	}
	assertClean(t, s)
}

// A corrupted cached layer is fetched again through cache.Image, within
// the same read, as the Get doc promises ("reported as not found, so the
// caller fetches it again").
func TestCache_SelfHeal(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 54, 2, 8192))
	target := fx.layers[1]
	for _, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			s, dir := openStore(t)
			ri, err := remote.Image(fx.ref)
			if err != nil {
				t.Fatal(err)
			}
			readLayersT(t, cache.Image(ri, remotecache.Cache(s)))
			c.apply(t, blobFile(dir, target))

			reg.reset()
			img := cache.Image(ri, remotecache.Cache(s))
			l, err := img.LayerByDigest(target)
			if err != nil {
				t.Fatalf("LayerByDigest: %v", err)
			}
			if b, err := tryReadAll(l.Compressed); err != nil || !bytes.Equal(b, fx.comp[target]) {
				t.Fatalf("Compressed() of the damaged layer: %v (%d bytes), want its %d bytes", err, len(b), len(fx.comp[target]))
			}
			if got := reg.gets(target); got != 1 {
				t.Errorf("%d GETs of the damaged layer, want 1", got)
			}
			for i, l := range must(img.Layers()) {
				if b, err := tryReadAll(l.Compressed); err != nil || !bytes.Equal(b, fx.comp[fx.layers[i]]) {
					t.Errorf("layer %d: %v", i, err)
				}
			}
			assertStored(t, s, target)
			assertClean(t, s)
		})
	}
}

func readLayersT(t testing.TB, img v1.Image) {
	t.Helper()
	for _, l := range must(img.Layers()) {
		readAll(t, l.Compressed)
	}
}

// The adapter never keeps bytes that do not match the digest, nor a
// partly read layer, unlike ggcr's filesystem cache, which writes to the
// final name as it reads.
func TestCache_KeepsOnlyWholeVerifiedLayers(t *testing.T) {
	img := randomImage(t, 52, 1, 64<<10)
	good := must(img.Layers())[0]
	h := must(good.Digest())
	tests := []struct {
		name    string
		layer   v1.Layer
		consume func(rc io.ReadCloser) error
		wantErr bool
	}{
		// Bytes that do not hash to the layer's digest.
		{"wrong bytes", &mangledLayer{Layer: good, mangle: func(b []byte) []byte { b[len(b)/2] ^= 1; return b }}, readToEnd, true},
		// Fewer bytes than the layer has.
		{"short", &mangledLayer{Layer: good, mangle: func(b []byte) []byte { return b[:len(b)/2] }}, readToEnd, true},
		// A reader that stops after a few bytes.
		{"closed early", good, func(rc io.ReadCloser) error {
			_, err := io.ReadFull(rc, make([]byte, 16))
			return err
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := openStore(t)
			c := remotecache.Cache(s)
			put, err := c.Put(tc.layer)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := put.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			err = tc.consume(rc)
			rc.Close()
			if (err != nil) != tc.wantErr {
				t.Errorf("reading: %v, want error: %v", err, tc.wantErr)
			}
			if _, err := c.Get(h); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("Get: %v, want cache.ErrNotFound", err)
			}
			assertNotStored(t, s, h)
			if litter := ingestLitter(t, dir); len(litter) > 0 {
				t.Errorf("ingest/ holds %v", litter)
			}
		})
	}
}

func readToEnd(rc io.ReadCloser) error {
	_, err := io.ReadAll(rc)
	return err
}

// mangledLayer serves its inner layer's metadata with damaged bytes.
type mangledLayer struct {
	v1.Layer
	mangle func([]byte) []byte
}

func (l *mangledLayer) Compressed() (io.ReadCloser, error) {
	b, err := tryReadAll(l.Layer.Compressed)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(l.mangle(b))), nil
}

// The adapter's layers from Get say what they are.
func TestCache_GetMediaType(t *testing.T) {
	s, _ := openStore(t)
	c := remotecache.Cache(s)
	tests := []struct {
		name  string
		layer v1.Layer
		want  types.MediaType
	}{
		// gzip magic
		{"gzip", must(randomImage(t, 53, 1, 512).Layers())[0], types.DockerLayer},
		// zstd magic
		{"zstd", zstdLayer(t), types.OCILayerZStd},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			put, err := c.Put(tc.layer)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, put.Compressed)
			got, err := c.Get(must(tc.layer.Digest()))
			if err != nil {
				t.Fatal(err)
			}
			if mt := must(got.MediaType()); mt != tc.want {
				t.Errorf("MediaType() = %s, want %s", mt, tc.want)
			}
			if b, want := readAll(t, got.Uncompressed), readAll(t, tc.layer.Uncompressed); !bytes.Equal(b, want) {
				t.Error("Uncompressed(): wrong bytes")
			}
		})
	}
}

// A reader from Compressed of a layer Get returned must outlive the layer:
// cache.Image drops the layer at once, and a cleanup that closed the file
// when the layer was collected broke reads mid-stream.
func TestCache_ReaderOutlivesLayer(t *testing.T) {
	s, _ := openStore(t)
	data := bytes.Repeat([]byte("layercache "), 200000)
	d, err := s.Put(t.Context(), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	h, err := v1.NewHash(d.String())
	if err != nil {
		t.Fatal(err)
	}
	l, err := remotecache.Cache(s).Get(h)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	l = nil
	_ = l
	for range 3 {
		runtime.GC()
	}
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read after the layer was collected: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want %d", len(got), len(data))
	}
}
