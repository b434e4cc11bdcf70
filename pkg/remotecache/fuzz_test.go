package remotecache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// fzRegistry is a minimal registry for fuzzing: it serves whatever blobs
// and manifests the current iteration put in it, by digest.
type fzRegistry struct {
	srv   *httptest.Server
	s     *store.Store // one store for every iteration: opening one costs fsyncs
	mu    sync.Mutex
	blobs map[string][]byte
}

func newFzRegistry(f *testing.F) *fzRegistry {
	s, err := store.Open(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	r := &fzRegistry{blobs: map[string][]byte{}, s: s}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v2/" {
			return
		}
		i := strings.LastIndex(req.URL.Path, "/")
		r.mu.Lock()
		b, ok := r.blobs[req.URL.Path[i+1:]]
		r.mu.Unlock()
		if !ok {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		if strings.Contains(req.URL.Path, "/manifests/") {
			var m struct {
				MediaType string `json:"mediaType"`
			}
			_ = jsonUnmarshal(b, &m)
			if m.MediaType == "" {
				m.MediaType = "application/vnd.oci.image.manifest.v1+json"
			}
			w.Header().Set("Content-Type", m.MediaType)
			w.Header().Set("Docker-Content-Digest", req.URL.Path[i+1:])
		}
		w.Header().Set("Content-Length", itoa(len(b)))
		if req.Method == http.MethodGet {
			w.Write(b)
		}
	}))
	f.Cleanup(r.srv.Close)
	return r
}

// set replaces what the registry serves and returns the digests of
// blobs, in order.
func (r *fzRegistry) set(blobs ...[]byte) []digest.Digest {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.blobs)
	var ds []digest.Digest
	for _, b := range blobs {
		d := digest.FromBytes(b)
		r.blobs[d.String()] = b
		ds = append(ds, d)
	}
	return ds
}

// pull reads what Image gives for the manifest ds[0] as a builder would,
// checking that every byte served without an error is the blob's, and
// that the store holds only blobs that verify.
func (r *fzRegistry) pull(t *testing.T, ds []digest.Digest) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, d := r.s, ds[0]
	ref, err := name.ParseReference(strings.TrimPrefix(r.srv.URL, "http://")+"/fuzz@"+d.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remotecache.Option{remotecache.WithContext(ctx), remotecache.WithTransport(r.srv.Client().Transport)}
	if idx, err := remotecache.Index(ref, s, opts...); err == nil {
		if im, err := idx.IndexManifest(); err == nil {
			for _, c := range im.Manifests {
				if img, err := idx.Image(c.Digest); err == nil {
					fzReadImage(t, img)
				}
			}
		}
	}
	if img, err := remotecache.Image(ref, s, opts...); err == nil {
		fzReadImage(t, img)
	}
	if ctx.Err() != nil {
		t.Fatalf("a pull hung until its deadline")
	}
	for _, d := range ds {
		if _, err := s.Stat(ctx, d, store.VerifyFirst); err != nil && !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("the store holds a blob that does not verify: %v", err)
		}
	}
}

// fzLimit bounds what a fuzz iteration reads of one stream, so that a
// decompression bomb costs time, not memory.
const fzLimit = 16 << 20

func fzReadImage(t *testing.T, img v1.Image) {
	raw, err := img.RawManifest()
	if err != nil {
		return
	}
	m, err := img.Manifest()
	if err != nil {
		return
	}
	if d, err := img.Digest(); err == nil && d.String() != digest.FromBytes(raw).String() {
		t.Fatalf("image digest %s, but its manifest hashes to %s", d, digest.FromBytes(raw))
	}
	if cfg, err := img.RawConfigFile(); err == nil && digest.FromBytes(cfg).String() != m.Config.Digest.String() {
		t.Fatalf("config served hashes to %s, want %s", digest.FromBytes(cfg), m.Config.Digest)
	}
	_, _ = img.ConfigFile()
	layers, err := img.Layers()
	if err != nil {
		return
	}
	for i, l := range layers {
		if i >= len(m.Layers) {
			t.Fatalf("%d layers for a manifest of %d", len(layers), len(m.Layers))
		}
		var verified []byte // the whole layer, as its digest names it
		if rc, err := l.Compressed(); err == nil {
			b, err := io.ReadAll(io.LimitReader(rc, fzLimit))
			rc.Close()
			if err == nil && len(b) < fzLimit {
				if digest.FromBytes(b).String() != m.Layers[i].Digest.String() {
					t.Fatalf("layer %d served %d bytes hashing to %s, want %s", i, len(b), digest.FromBytes(b), m.Layers[i].Digest)
				}
				verified = b
			}
		}
		if rc, err := l.Uncompressed(); err == nil {
			h := sha256.New()
			n, err := io.Copy(h, io.LimitReader(rc, fzLimit))
			rc.Close()
			if err != nil || n >= fzLimit || verified == nil {
				continue
			}
			want, werr := fzDecompress(verified)
			if werr != nil {
				t.Fatalf("layer %d: uncompressed stream ended cleanly, but the layer does not decompress: %v", i, werr)
			}
			if got := hex.EncodeToString(h.Sum(nil)); len(want) < fzLimit && got != hex.EncodeToString(sha256Sum(want)) {
				t.Fatalf("layer %d: uncompressed stream ended cleanly with %d bytes that are not the layer's decompressed %d bytes", i, n, len(want))
			}
		}
	}
}

// fzDecompress is what Uncompressed must serve for the compressed layer b:
// gzip and zstd found by their magic bytes, anything else as it is.
func fzDecompress(b []byte) ([]byte, error) {
	var r io.Reader
	switch {
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		r = zr
	case bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		r = zr
	default:
		return b, nil
	}
	return io.ReadAll(io.LimitReader(r, fzLimit))
}

func sha256Sum(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}

// FuzzManifest serves arbitrary manifests and configs (under their own
// digests, so that they pass the digest checks and reach the parsers):
// remotecache never panics, serves only bytes that match the digests the
// manifest names, and stores only blobs that verify.
func FuzzManifest(f *testing.F) {
	layer := fzGzipTar(f, "hello")
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + fzTarDigest(f, "hello") + `"]}}`)
	man := func(config, layers string) string {
		return `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` + config + `,"layers":[` + layers + `]}`
	}
	desc := func(mt string, b []byte) string {
		return `{"mediaType":"` + mt + `","digest":"` + digest.FromBytes(b).String() + `","size":` + itoa(len(b)) + `}`
	}
	good := man(desc("application/vnd.oci.image.config.v1+json", cfg), desc("application/vnd.oci.image.layer.v1.tar+gzip", layer))
	for _, m := range []string{
		good,
		man(desc("application/vnd.oci.image.config.v1+json", cfg), ""),
		man(`{"digest":"sha256:../../../etc/passwd","size":1}`, ""),
		man(desc("x", cfg), `{"digest":"`+digest.FromBytes(layer).String()+`","size":-1}`),
		man(desc("x", cfg), `{"digest":"`+digest.FromBytes(layer).String()+`","size":99999999999}`),
		man(desc("x", cfg), `{"digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":1}`),
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
			`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + digest.FromString(good).String() + `","size":` + itoa(len(good)) +
			`,"platform":{"os":"linux","architecture":"amd64"}}]}`,
		`{"schemaVersion":2,"manifests":[{"digest":"sha256:zz","size":1}]}`,
		`{"schemaVersion":1}`, `null`, `[]`, `{"config":7}`, "",
	} {
		f.Add([]byte(m), cfg)
	}
	f.Add([]byte(good), []byte(`{"rootfs":{"diff_ids":[7]}}`))
	f.Add([]byte(good), []byte(`not json`))
	r := newFzRegistry(f)
	f.Fuzz(func(t *testing.T, manifest, config []byte) {
		// The good manifest is served too, for an index that names it.
		r.pull(t, r.set(manifest, config, layer, []byte(good)))
	})
}

// FuzzUncompressed serves an image whose one layer is arbitrary bytes
// (gzip, zstd, tar or garbage): Uncompressed never panics, and ends
// cleanly only with the decompression of the layer's verified bytes, whatever
// diff ID the config claims.
func FuzzUncompressed(f *testing.F) {
	gz := fzGzipTar(f, "hello")
	zs := fzZstdTar(f, "hello")
	for _, b := range [][]byte{
		gz, zs, fzTar(f, "hello"), gz[:len(gz)/2], zs[:len(zs)/2], append(append([]byte(nil), gz...), gz...),
		{0x1f, 0x8b}, {0x28, 0xb5, 0x2f, 0xfd}, nil, []byte("plain text, not a tar"),
		fzCorrupt(gz, len(gz)-6), fzCorrupt(zs, len(zs)-2),
	} {
		f.Add(b, false)
		f.Add(b, true)
	}
	r := newFzRegistry(f)
	f.Fuzz(func(t *testing.T, layer []byte, diffIDOfHello bool) {
		// The diff ID is that of the "hello" tar, or of the layer's own
		// bytes (right for an uncompressed layer).
		diffID := digest.FromBytes(layer).String()
		if diffIDOfHello {
			diffID = fzTarDigest(t, "hello")
		}
		cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + diffID + `"]}}`)
		man := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + digest.FromBytes(cfg).String() + `","size":` + itoa(len(cfg)) + `},` +
			`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + digest.FromBytes(layer).String() + `","size":` + itoa(len(layer)) + `}]}`)
		r.pull(t, r.set(man, cfg, layer))
	})
}

func fzCorrupt(b []byte, at int) []byte {
	c := append([]byte(nil), b...)
	if at >= 0 && at < len(c) {
		c[at] ^= 0xff
	}
	return c
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
