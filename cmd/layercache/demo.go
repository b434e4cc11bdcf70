package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// demoJSON is the stable schema of `layercache demo --json`.
type demoJSON struct {
	Registry string  `json:"registry"`
	Image    string  `json:"image"`
	Bytes    int64   `json:"imageBytes"`
	CacheDir string  `json:"cacheDir"`
	Cold     demoRun `json:"cold"`
	Warm     demoRun `json:"warm"`
	Kept     bool    `json:"kept"`
}

type demoRun struct {
	Duration     time.Duration `json:"durationNs"`
	FetchedBytes int64         `json:"fetchedBytes"` // bytes of blobs fetched from the registry
	CachedBytes  int64         `json:"cachedBytes"`  // bytes of blobs read from the cache, verified
	FetchedBlobs int           `json:"fetchedBlobs"`
	CachedBlobs  int           `json:"cachedBlobs"`
}

func newDemoCmd(g *globals) *cobra.Command {
	var (
		layers  int
		layerMB int
		keep    bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Warm a synthetic image from an in-process registry, cold then warm",
		Long: `A quick start that needs no network and no Docker. It starts a registry inside
this process on 127.0.0.1, pushes a synthetic base image to it, then warms the
image into the cache twice: cold (every blob from the registry) and warm (every
blob from the cache, verified). It prints both timings, the bytes the registry
served each time, and the cache directory used. The demo's blobs are removed
from the cache afterwards unless --keep is given.`,
		Example: `  go run ./cmd/layercache demo
  layercache demo --layers 8 --layer-mb 16 --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if layers < 1 || layerMB < 1 {
				return usagef("--layers and --layer-mb must be at least 1")
			}
			return runDemo(cmd.Context(), g, layers, layerMB, keep)
		},
	}
	f := cmd.Flags()
	f.IntVar(&layers, "layers", 4, "layers in the synthetic image")
	f.IntVar(&layerMB, "layer-mb", 10, "size of each layer in MiB")
	f.BoolVar(&keep, "keep", false, "keep the demo image in the cache afterwards")
	return cmd
}

func runDemo(ctx context.Context, g *globals, layers, layerMB int, keep bool) error {
	s, err := g.openStore()
	if err != nil {
		return err
	}
	reg := registry.New(registry.Logger(discardLogger()))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo registry: %w", err)
	}
	srv := &http.Server{Handler: reg, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	ref, err := name.ParseReference(ln.Addr().String() + "/layercache/demo-base:latest")
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "building a synthetic image of %d layers × %d MiB...\n", layers, layerMB)
	img, err := demoImage(layers, layerMB)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("pushing the demo image: %w", err)
	}
	digests, total, err := imageBlobs(img)
	if err != nil {
		return err
	}
	// Start cold: the image is deterministic, so a kept earlier demo
	// would otherwise make the first run warm.
	forget(ctx, s, digests)

	out := demoJSON{Registry: ln.Addr().String() + " (in-process)", Image: ref.Name(), Bytes: total, CacheDir: s.Dir(), Kept: keep}
	// The counts are the pull's own: what Warm read from the registry
	// and from the cache, complete when it returns. (A count taken on the
	// registry's side is not: the server may note its last write after
	// the client has read it.)
	warmOnce := func() (demoRun, error) {
		rep, err := remotecache.Warm(ctx, ref, s, remotecache.WithLogger(g.log))
		if err != nil {
			return demoRun{}, err
		}
		return demoRun{Duration: rep.Duration, FetchedBytes: rep.Fetched.Bytes, CachedBytes: rep.Cached.Bytes,
			FetchedBlobs: rep.Fetched.Blobs, CachedBlobs: rep.Cached.Blobs}, nil
	}
	if out.Cold, err = warmOnce(); err != nil {
		return err
	}
	if out.Warm, err = warmOnce(); err != nil {
		return err
	}
	if !keep {
		forget(ctx, s, digests)
		if err := s.Untag(ctx, ref.Name()); err != nil {
			return err
		}
	}
	if g.json {
		return g.printJSON(out)
	}
	w := g.stdout
	fmt.Fprintf(w, "registry:  %s\n", out.Registry)
	fmt.Fprintf(w, "image:     %s (%d layers, %s)\n", out.Image, layers, humanBytes(total))
	fmt.Fprintf(w, "cache dir: %s\n", out.CacheDir)
	for _, r := range []struct {
		label string
		run   demoRun
	}{{"cold", out.Cold}, {"warm", out.Warm}} {
		fmt.Fprintf(w, "%s: %8s  fetched %s from the registry, %s from the cache (verified)\n",
			r.label, r.run.Duration.Round(time.Millisecond), humanBytes(r.run.FetchedBytes), humanBytes(r.run.CachedBytes))
	}
	if out.Warm.Duration > 0 {
		fmt.Fprintf(w, "warm run: %.1f× faster, %s not downloaded\n", float64(out.Cold.Duration)/float64(out.Warm.Duration), humanBytes(out.Cold.FetchedBytes-out.Warm.FetchedBytes))
	}
	if !keep {
		fmt.Fprintln(w, "(the demo image was removed from the cache again; --keep keeps it)")
	}
	return nil
}

// demoImage builds a deterministic image of incompressible layers, so
// that the bytes moved are the bytes shown.
func demoImage(layers, layerMB int) (v1.Image, error) {
	rng := rand.New(rand.NewChaCha8([32]byte{'l', 'a', 'y', 'e', 'r', 'c', 'a', 'c', 'h', 'e'}))
	img := empty.Image
	for i := range layers {
		data := make([]byte, layerMB<<20)
		for j := 0; j < len(data); j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8 && j+k < len(data); k++ {
				data[j+k] = byte(v >> (8 * k))
			}
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		hdr := &tar.Header{Name: fmt.Sprintf("layer%d/data.bin", i), Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		tarBytes := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(tarBytes)), nil
		}, tarball.WithCompressionLevel(1))
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	return mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: mustRootFS(img)})
}

func mustRootFS(img v1.Image) v1.RootFS {
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.RootFS{Type: "layers"}
	}
	return cf.RootFS
}

// imageBlobs lists the digests of an image's manifest, config and layers,
// and their total size.
func imageBlobs(img v1.Image) ([]digest.Digest, int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, 0, err
	}
	md, err := img.Digest()
	if err != nil {
		return nil, 0, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, 0, err
	}
	ds := []digest.Digest{digest.Digest(md.String()), digest.Digest(m.Config.Digest.String())}
	total := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		ds = append(ds, digest.Digest(l.Digest.String()))
		total += l.Size
	}
	return ds, total, nil
}

// forget removes the demo's blobs from the cache.
func forget(ctx context.Context, s *store.Store, ds []digest.Digest) {
	for _, d := range ds {
		if err := s.Delete(ctx, d); err != nil && !errors.Is(err, store.ErrNotFound) {
			return
		}
	}
}
