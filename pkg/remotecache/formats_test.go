package remotecache_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// Layer formats other than the gzip layers of random.Image, pulled through
// remotecache.Image: what Compressed and Uncompressed serve, cold (from the
// registry, into the store) and warm (from the store).

// tarOf is a tar of files named file0..fileN with the given bodies.
func tarOf(t testing.TB, bodies ...[]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, body := range bodies {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("file%d", i), Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// mixedTar is a tar of about 1 MiB, half random bytes (which zstd stores)
// and half text (which it compresses), from a seeded source.
func mixedTar(t testing.TB, seed int64) []byte {
	t.Helper()
	random := make([]byte, 512<<10)
	rand.New(rand.NewSource(seed)).Read(random)
	return tarOf(t, random, []byte(strings.Repeat("layercache zstd layer\n", 24<<10)), nil)
}

// assertLayerBytes reads l whole through Read and through io.Copy (which
// takes the readers' WriteTo), and compares with comp and uncomp.
func assertLayerBytes(t *testing.T, pass string, l v1.Layer, comp, uncomp []byte) {
	t.Helper()
	for _, read := range []struct {
		how string
		fn  func(func() (io.ReadCloser, error)) ([]byte, error)
	}{{"Read", tryReadAll}, {"io.Copy", tryCopyAll}} {
		if got, err := read.fn(l.Compressed); err != nil || !bytes.Equal(got, comp) {
			t.Errorf("%s: Compressed() by %s: %d bytes, %v; want the registry's %d bytes", pass, read.how, len(got), err, len(comp))
		}
		if got, err := read.fn(l.Uncompressed); err != nil || !bytes.Equal(got, uncomp) {
			t.Errorf("%s: Uncompressed() by %s: %d bytes, %v; want the %d bytes of the tar", pass, read.how, len(got), err, len(uncomp))
		}
	}
}

// Each format's layer is served as it is (Compressed) and decompressed as
// its format says (Uncompressed), from the registry and then from the
// store, with the manifest's media type. ggcr builds the layers itself
// where it can: zstd with tarball.WithCompression, as `crane append` and
// ko do.
func TestFormats_Layers(t *testing.T) {
	plain := mixedTar(t, 90)
	zl, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(plain)), nil },
		tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		t.Fatal(err)
	}
	// Two frames with a skippable frame between, as zstd:chunked layers
	// are laid out: the decoder reads across frames and skips the
	// metadata frame.
	part1, part2 := tarOf(t, []byte("first frame\n")), tarOf(t, []byte(strings.Repeat("second frame\n", 4096)))
	multi := append(zstdFrame(t, part1[:len(part1)-1024]), skippableFrame([]byte(`{"manifest":"metadata"}`))...)
	multi = append(multi, zstdFrame(t, append(part1[len(part1)-1024:], part2...))...)
	multiPlain := append(append([]byte{}, part1...), part2...)

	tests := []struct {
		name   string
		layer  v1.Layer
		mt     types.MediaType
		uncomp []byte
	}{
		{"zstd, by ggcr's tarball package", zl, types.OCILayerZStd, plain},
		{"zstd, two frames and a skippable frame", static.NewLayer(multi, types.OCILayerZStd), types.OCILayerZStd, multiPlain},
		// An uncompressed layer is its own uncompressed form.
		{"uncompressed tar", static.NewLayer(plain, types.OCIUncompressedLayer), types.OCIUncompressedLayer, plain},
		{"uncompressed Docker tar", static.NewLayer(plain, types.DockerUncompressedLayer), types.DockerUncompressedLayer, plain},
	}
	reg := newTestRegistry(t)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fx := reg.pushImage(t, fmt.Sprintf("test/format%d:v1", i), appendLayers(t, randomImage(t, 91, 1, 1024), tc.layer))
			comp := readAll(t, tc.layer.Compressed)
			h := must(tc.layer.Digest())
			s, _ := openStore(t)
			for _, pass := range []string{"cold", "warm"} {
				img, err := remotecache.Image(fx.ref, s, fast)
				if err != nil {
					t.Fatal(err)
				}
				l, err := img.LayerByDigest(h)
				if err != nil {
					t.Fatal(err)
				}
				if mt := must(l.MediaType()); mt != tc.mt {
					t.Errorf("%s: MediaType() = %s, want %s", pass, mt, tc.mt)
				}
				if m := must(img.Manifest()); m.Layers[1].MediaType != tc.mt {
					t.Errorf("%s: manifest says %s, want %s", pass, m.Layers[1].MediaType, tc.mt)
				}
				assertLayerBytes(t, pass, l, comp, tc.uncomp)
				assertStored(t, s, h)
			}
			if got := reg.gets(h); got != 1 {
				t.Errorf("%d GETs of the layer, want 1: the warm pass must read the store", got)
			}
		})
	}
}

// zstdFrame is b compressed as one zstd frame.
func zstdFrame(t testing.TB, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// skippableFrame is a zstd skippable frame holding b (RFC 8878, 3.1.2).
func skippableFrame(b []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, 0x184D2A50)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
	return append(out, b...)
}

// foreignImage is a random image with a gzip layer appended as a foreign
// (non-distributable) layer whose descriptor names urls.
func foreignImage(t testing.TB, urls ...string) (v1.Image, v1.Layer, []byte) {
	t.Helper()
	plain := tarOf(t, []byte("a Windows base layer, say\n"))
	// remote.Write asks the layer, not the manifest, whether it may
	// upload it: the layer says it is foreign too.
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(plain)), nil },
		tarball.WithMediaType(types.DockerForeignLayer))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(randomImage(t, 92, 1, 1024), mutate.Addendum{Layer: l, MediaType: types.DockerForeignLayer, URLs: urls})
	if err != nil {
		t.Fatal(err)
	}
	return img, l, plain
}

// A foreign layer's descriptor passes through unchanged (media type and
// urls, in Manifest and in the layer's Descriptor, which remote.Write
// reads), and when the registry holds the blob (pushed with
// remote.WithNondistributable) it is fetched, stored and served like any
// other.
func TestFormats_ForeignLayerFromRegistry(t *testing.T) {
	const url = "https://foreign.example/layers/base.tar.gz"
	reg := newTestRegistry(t)
	img, fl, plain := foreignImage(t, url)
	ref := reg.ref(t, "test/foreign:v1")
	if err := remote.Write(ref, img, remote.WithNondistributable); err != nil {
		t.Fatal(err)
	}
	h := must(fl.Digest())
	comp := readAll(t, fl.Compressed)
	reg.reset()
	s, _ := openStore(t)
	for _, pass := range []string{"cold", "warm"} {
		ci, err := remotecache.Image(ref, s, fast)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(must(ci.RawManifest()), must(img.RawManifest())) {
			t.Errorf("%s: RawManifest differs from the pushed one", pass)
		}
		d := must(ci.Manifest()).Layers[1]
		if d.MediaType != types.DockerForeignLayer || len(d.URLs) != 1 || d.URLs[0] != url {
			t.Errorf("%s: manifest layer %+v, want media type %s and urls [%s]", pass, d, types.DockerForeignLayer, url)
		}
		l := must(ci.LayerByDigest(h))
		ld, err := l.(interface {
			Descriptor() (*v1.Descriptor, error)
		}).Descriptor()
		if err != nil || ld.MediaType != types.DockerForeignLayer || len(ld.URLs) != 1 || ld.URLs[0] != url {
			t.Errorf("%s: layer Descriptor() = %+v, %v; want the manifest's", pass, ld, err)
		}
		assertLayerBytes(t, pass, l, comp, plain)
	}
	if got := reg.gets(h); got != 1 {
		t.Errorf("%d GETs of the foreign layer, want 1", got)
	}
	assertStored(t, s, h)
}

// When the registry lacks a foreign layer (remote.Write skips them by
// default), ggcr's remote layers fall back to the urls of the descriptor;
// remotecache does not today: it fetches every blob by digest from the
// registry (fetchBlob, through remote.Puller.Layer, which has no
// descriptor), so reading the layer fails and the urls are never asked.
// The descriptor still passes through unchanged. This test records that
// difference, so that a change to it is seen.
func TestFormats_ForeignLayerNotFromURLs(t *testing.T) {
	reg := newTestRegistry(t)
	_, fl, plain := foreignImage(t)
	comp := readAll(t, fl.Compressed)
	var served atomic.Int32
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Write(comp)
	}))
	t.Cleanup(foreign.Close)
	// ggcr refuses foreign urls that are IP literals of private or
	// loopback addresses, so the url names a host that this transport
	// dials at the test server.
	const url = "http://foreign.test/layers/base.tar.gz"
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == "foreign.test:80" {
			addr = strings.TrimPrefix(foreign.URL, "http://")
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	img, fl, _ := foreignImage(t, url)
	ref := reg.ref(t, "test/foreign:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	h := must(fl.Digest())

	// ggcr: the registry, then the url.
	ri, err := remote.Image(ref, remote.WithTransport(tr))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, must(ri.LayerByDigest(h)).Uncompressed); !bytes.Equal(got, plain) {
		t.Fatalf("ggcr's remote layer read %d bytes, want the %d of the tar", len(got), len(plain))
	}
	if served.Load() != 1 {
		t.Fatalf("the url was asked %d times by ggcr, want 1", served.Load())
	}

	s, _ := openStore(t)
	ci, err := remotecache.Image(ref, s, fast, remotecache.WithTransport(tr))
	if err != nil {
		t.Fatal(err)
	}
	if d := must(ci.Manifest()).Layers[1]; d.MediaType != types.DockerForeignLayer || len(d.URLs) != 1 || d.URLs[0] != url {
		t.Errorf("manifest layer %+v, want media type %s and urls [%s]", d, types.DockerForeignLayer, url)
	}
	if _, err := tryReadAll(must(ci.LayerByDigest(h)).Compressed); err == nil || !strings.Contains(err.Error(), "BLOB_UNKNOWN") {
		t.Errorf("reading the foreign layer: %v, want the registry's BLOB_UNKNOWN", err)
	}
	if _, err := remotecache.Warm(t.Context(), ref, s, fast, remotecache.WithTransport(tr)); err == nil {
		t.Error("Warm of an image whose foreign layer the registry lacks succeeded")
	}
	if served.Load() != 1 {
		t.Errorf("the url was asked %d times in all, want only ggcr's 1", served.Load())
	}
	assertNotStored(t, s, h)
}

// A gzip layer that expands a thousandfold (1 GiB of zeros from about
// 1 MiB; 128 MiB under the race detector) streams through Uncompressed,
// from the registry and from the store: the heap stays bounded, whatever
// the layer expands to. The heap is sampled from the reading goroutine
// every 16 MiB, so the samples do not depend on timing.
func TestFormats_GzipBombStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("decompresses 2 GiB; skipped with -short")
	}
	const (
		member = 4 << 20  // zeros per gzip member
		size   = bombSize // zeros in all
		limit  = 48 << 20 // heap growth allowed
	)
	// Gzip members may be concatenated (RFC 1952, 2.2): compress one and
	// repeat it, rather than compress 1 GiB.
	var one bytes.Buffer
	zw, err := gzip.NewWriterLevel(&one, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(make([]byte, member)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	bomb := bytes.Repeat(one.Bytes(), size/member)
	t.Logf("layer: %d KiB expanding to %d MiB", len(bomb)>>10, size>>20)

	reg := newTestRegistry(t)
	bl := static.NewLayer(bomb, types.DockerLayer) // its diff ID is wrong, which nothing here reads
	// Not pushImage, which reads every layer whole to compare with.
	ref := reg.ref(t, "test/bomb:v1")
	if err := remote.Write(ref, appendLayers(t, randomImage(t, 93, 1, 1024), bl)); err != nil {
		t.Fatal(err)
	}
	s, _ := openStore(t)
	h := must(bl.Digest())
	for _, pass := range []string{"cold", "warm"} {
		img, err := remotecache.Image(ref, s, fast)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := must(img.LayerByDigest(h)).Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		runtime.GC()
		var before, m runtime.MemStats
		runtime.ReadMemStats(&before)
		peak := before.HeapInuse
		buf, zeros := make([]byte, 32<<10), make([]byte, 32<<10)
		var n, next int64
		for {
			k, err := rc.Read(buf)
			if !bytes.Equal(buf[:k], zeros[:k]) {
				t.Fatalf("%s: the layer holds something else than zeros after %d bytes", pass, n)
			}
			n += int64(k)
			if n >= next {
				runtime.ReadMemStats(&m)
				peak = max(peak, m.HeapInuse)
				next += 16 << 20
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: reading: %v", pass, err)
			}
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&m)
		grown, allocated := int64(peak)-int64(before.HeapInuse), m.TotalAlloc-before.TotalAlloc
		t.Logf("%s: read %d MiB; heap in use grew by at most %d KiB, %d KiB allocated", pass, n>>20, grown>>10, allocated>>10)
		if n != size {
			t.Errorf("%s: Uncompressed gave %d bytes, want %d", pass, n, size)
		}
		if grown > limit {
			t.Errorf("%s: heap in use grew by %d MiB, want < %d MiB: Uncompressed must stream", pass, grown>>20, limit>>20)
		}
		// What is allocated in all bounds the work per byte: a reader
		// that buffered its output would allocate at least the layer.
		if allocated > limit {
			t.Errorf("%s: %d MiB allocated while reading, want < %d MiB", pass, allocated>>20, limit>>20)
		}
		assertStored(t, s, h)
	}
}
