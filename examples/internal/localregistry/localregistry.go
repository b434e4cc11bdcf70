// Package localregistry runs throwaway OCI registries inside the process
// and pushes a deterministic synthetic base image to them, so that the
// examples run with no network and no Docker.
//
// It is scaffolding for the examples' -serve flag, not part of layercache:
// a tool that embeds the cache pulls its base from a real registry.
package localregistry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is go-containerregistry's in-memory registry, served over plain
// HTTP on a free port of 127.0.0.1 (go-containerregistry speaks HTTP, not
// HTTPS, to 127.0.0.1). Its contents live until Close.
type Registry struct {
	// Host is the registry's address, "127.0.0.1:PORT", to put in front of
	// a repository name.
	Host string

	srv *http.Server
}

// Start starts a registry. Close it when done.
func Start() (*Registry, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("in-process registry: %w", err)
	}
	srv := &http.Server{
		Handler:           registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(ln) // returns http.ErrServerClosed on Close
	return &Registry{Host: ln.Addr().String(), srv: srv}, nil
}

// Close stops the registry and drops its contents.
func (r *Registry) Close() error { return r.srv.Close() }

// Ref parses repoAndTag ("base/synthetic:latest") as a reference on r.
func (r *Registry) Ref(repoAndTag string) (name.Reference, error) {
	return name.ParseReference(r.Host + "/" + repoAndTag)
}

// BaseLayerSizes are the sizes of the synthetic base's layer files:
// random, so incompressible, so the bytes moved are the bytes shown.
var BaseLayerSizes = []int{2 << 20, 1 << 20, 1 << 20}

// SyntheticBase returns a linux/amd64 OCI image of len(BaseLayerSizes)
// layers of random bytes. It is deterministic: every call, in every
// process, gives the same blobs and so the same digests, which is what
// lets a second run find the base in the cache although the registry is
// new.
func SyntheticBase() (v1.Image, error) {
	rng := rand.New(rand.NewChaCha8([32]byte{'l', 'a', 'y', 'e', 'r', 'c', 'a', 'c', 'h', 'e', '-', 'b', 'a', 's', 'e'}))
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	for i, size := range BaseLayerSizes {
		data := make([]byte, size)
		for j := 0; j < len(data); j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8 && j+k < len(data); k++ {
				data[j+k] = byte(v >> (8 * k))
			}
		}
		tarBytes, err := oneFileTar(fmt.Sprintf("base/layer%d.bin", i), data)
		if err != nil {
			return nil, err
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(tarBytes)), nil
		}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// PushBase pushes SyntheticBase to ref.
func PushBase(ctx context.Context, ref name.Reference) error {
	img, err := SyntheticBase()
	if err != nil {
		return fmt.Errorf("building the synthetic base: %w", err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("pushing the synthetic base to %s: %w", ref, err)
	}
	return nil
}

func oneFileTar(path string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: path, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
