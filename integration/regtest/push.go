package regtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// RandomLayer returns an OCI layer (application/vnd.oci.image.layer.v1.tar+gzip)
// whose tar holds one file, random.bin, of size random bytes. No two calls
// return the same layer.
//
// size is the file's size, not the blob's: the tar adds 1.5 KiB of headers
// and end blocks plus padding to 512 bytes, and gzip adds 5 bytes per
// 64 KiB. Use the layer's Size() for the exact blob size. The gzip stream
// uses stored (uncompressed) deflate blocks: random bytes do not compress
// anyway, and this keeps a 1 GiB layer as cheap to make as a copy. (ggcr's
// random.Layer is similar but deflates.) The layer is held in memory.
func RandomLayer(t testing.TB, size int64) v1.Layer {
	t.Helper()
	l, err := randomLayer(size)
	if err != nil {
		t.Fatalf("random layer of %d bytes: %v", size, err)
	}
	return l
}

func randomLayer(size int64) (v1.Layer, error) {
	var buf bytes.Buffer
	buf.Grow(int(size) + int(size>>13) + 4096)
	zw, err := gzip.NewWriterLevel(&buf, gzip.NoCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	hdr := &tar.Header{
		Name:     "random.bin",
		Mode:     0o644,
		Size:     size,
		Typeflag: tar.TypeReg,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := io.CopyN(tw, newSource(), size); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// newSource returns a fast random source seeded from crypto/rand, so that
// layers differ between calls and runs.
func newSource() *rand.ChaCha8 {
	var seed [32]byte
	_, _ = crand.Read(seed[:]) // never fails on Go ≥ 1.24
	return rand.NewChaCha8(seed)
}

// RandomImage returns an OCI image for linux/amd64 with one RandomLayer per
// entry of layerSizes, bottom layer first. Its config carries a random
// label (regtest.nonce), so even two images without layers differ.
func RandomImage(t testing.TB, layerSizes ...int64) v1.Image {
	t.Helper()
	img, err := randomImage(v1.Platform{OS: "linux", Architecture: "amd64"}, layerSizes)
	if err != nil {
		t.Fatalf("random image: %v", err)
	}
	return img
}

func randomImage(platform v1.Platform, layerSizes []int64) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS = platform.OS
	cfg.Architecture = platform.Architecture
	cfg.Variant = platform.Variant
	cfg.OSVersion = platform.OSVersion
	cfg.OSFeatures = platform.OSFeatures
	cfg.Created = v1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	var nonce [8]byte
	_, _ = crand.Read(nonce[:])
	cfg.Config.Labels = map[string]string{"regtest.nonce": hex.EncodeToString(nonce[:])}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return nil, err
	}
	for i, size := range layerSizes {
		l, err := randomLayer(size)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer}); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// RandomIndex returns an OCI image index with one RandomImage per platform,
// in that order, each with its own random layers of layerSizes. Each child's
// descriptor in the index carries its platform, and its config has the same
// OS, architecture, variant and OS version, as validate.Index checks.
func RandomIndex(t testing.TB, platforms []v1.Platform, layerSizes ...int64) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		img, err := randomImage(p, layerSizes)
		if err != nil {
			t.Fatalf("random image for %s: %v", p.String(), err)
		}
		adds = append(adds, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{MediaType: types.OCIManifestSchema1, Platform: &p},
		})
	}
	return mutate.AppendManifests(idx, adds...)
}

// PushImage pushes RandomImage(t, layerSizes...) to ref ("host:port/repo:tag"
// or "...@sha256:...") and returns it. It fails t if the push fails.
//
// The push goes to the host that ref names, with a transport of its own
// (plain HTTP, no proxy from the environment), so a ref on Registry.Addr
// bypasses any Proxy and leaves its counts alone. Name Proxy.Addr in ref to
// push through a proxy.
func PushImage(t testing.TB, ref string, layerSizes ...int64) v1.Image {
	t.Helper()
	img := RandomImage(t, layerSizes...)
	r := parseRef(t, ref)
	if err := remote.Write(r, img, pushOptions(t)...); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return img
}

// PushIndex pushes RandomIndex(t, platforms, layerSizes...) to ref, children
// first, and returns it. It fails t if the push fails. See PushImage for
// where the push goes.
func PushIndex(t testing.TB, ref string, platforms []v1.Platform, layerSizes ...int64) v1.ImageIndex {
	t.Helper()
	idx := RandomIndex(t, platforms, layerSizes...)
	r := parseRef(t, ref)
	if err := remote.WriteIndex(r, idx, pushOptions(t)...); err != nil {
		t.Fatalf("pushing index %s: %v", ref, err)
	}
	return idx
}

func parseRef(t testing.TB, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("reference %q: %v", ref, err)
	}
	return r
}

// pushOptions are the remote options of PushImage and PushIndex: t's
// context and a dedicated transport that t's cleanup closes.
func pushOptions(t testing.TB) []remote.Option {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 16,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return []remote.Option{remote.WithContext(t.Context()), remote.WithTransport(tr)}
}
