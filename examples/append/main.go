// Append is a crane-style tool: it appends a directory as a new layer to a
// base image and pushes the result, pulling the base through layercache.
// The first run downloads the base's blobs and keeps them in the cache;
// every later run reads them from the cache, verified, and downloads none.
//
// Run it with no network at all: -serve starts a registry inside the
// process, pushes a synthetic base of a few MiB to it, and pushes the
// result to a second in-process registry:
//
//	go run ./examples/append -serve
//	go run ./examples/append -serve -dir ./site -layout /tmp/appended
//
// Against real registries (credentials come from ~/.docker/config.json and
// the credential helpers it names, as with crane and docker):
//
//	go run ./examples/append -base cgr.dev/chainguard/static:latest \
//	    -dir ./site -dst ghcr.io/you/site:latest -layout ./out
//
// The cache lives where -cache says, or else where cachedir.Dir finds it:
// $OCIBUILD_CACHE_DIR, else <project root>/_build/ocibuild_cache. Run
// twice with the same cache and the second run reports
//
//	base blobs from registry: 0 bytes (0 blobs)
//
// What a tool author needs is in run: open the store, pull the base with
// remotecache.Image, then use the image as any other v1.Image. Pushes need
// no change: the base's layers are remote.MountableLayer values, so
// remote.Write mounts them when -dst is on the base's registry, and
// otherwise uploads them from the cache. The image's digest is the same on
// every run: the layer's tar is built with fixed times and owners.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"embed"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ocibuild/layercache/examples/internal/scaffold"
	"github.com/ocibuild/layercache/pkg/cachedir"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// sample is what -dir defaults to, so that `-serve` alone has something
// to append.
//
//go:embed sample
var sample embed.FS

// epoch is the modification time of every file in the new layer: fixed,
// so that the same directory gives the same layer digest on every run.
var epoch = time.Unix(0, 0)

func main() { scaffold.Main("append", run) }

// run is the whole tool. The result, the pushed reference by digest (or
// the digest alone without -dst), goes to stdout; the report to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("append", flag.ContinueOnError)
	flags.SetOutput(stderr)
	var (
		baseFlag  = flags.String("base", "", "base image `REF` (default with -serve: a synthetic base on an in-process registry)")
		dirFlag   = flags.String("dir", "", "`DIR` to add as a layer (default: a small sample directory built into this example)")
		dstFlag   = flags.String("dst", "", "push the result to `REF` (default with -serve: an in-process registry)")
		layoutDir = flags.String("layout", "", "also write the result to the OCI image layout in `DIR`")
		cacheDir  = flags.String("cache", "", "layer cache `DIR` (default: cachedir.Dir(), e.g. <project>/_build/ocibuild_cache)")
		serve     = flags.Bool("serve", false, "run in-process registries for what -base and -dst leave out: no network needed")
	)
	if err := scaffold.Parse(flags, args); err != nil {
		return err
	}
	if *baseFlag == "" && !*serve {
		return scaffold.UsageError{Msg: "give -base REF, or -serve to use a synthetic base on an in-process registry"}
	}
	if *dstFlag == "" && *layoutDir == "" && !*serve {
		return scaffold.UsageError{Msg: "nothing to write: give -dst REF, -layout DIR or both"}
	}
	fsys, err := layerSource(*dirFlag)
	if err != nil {
		return err
	}
	start := time.Now()

	// 1. Open the cache. The store is safe to share with other goroutines
	// and other processes (parallel CI jobs) on the same host.
	dir := *cacheDir
	if dir == "" {
		d, err := cachedir.Dir()
		if err != nil {
			return err
		}
		dir = d
	}
	s, err := store.Open(dir)
	if err != nil {
		return err
	}
	defer s.Close() // writes the pull counters it holds in memory (layercache stats)
	fmt.Fprintf(stderr, "cache: %s\n", s.Dir())

	// 2. Decide what to pull and where to push.
	baseRef, dstRef, cleanup, err := scaffold.Refs(ctx, *baseFlag, *dstFlag, "example/append:latest", *serve, stderr)
	if err != nil {
		return err
	}
	defer cleanup()

	// 3. Pull the base through the cache, with crane's credentials. Any
	// other go-containerregistry option would go in WithRemote; the
	// counting transport is only there to show what came over the wire.
	meter := scaffold.NewMeter(ctx, s)
	base, err := remotecache.Image(baseRef, s,
		remotecache.WithContext(ctx),
		remotecache.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		remotecache.WithKeychain(authn.DefaultKeychain),
		remotecache.WithTransport(meter.Transport),
	)
	if err != nil {
		return err
	}

	// 4. Append the directory as a layer, of the media type family of the
	// base's manifest (as crane append does).
	tarBytes, err := tarFS(fsys)
	if err != nil {
		return fmt.Errorf("building the layer: %w", err)
	}
	layerType := types.DockerLayer
	if mt, err := base.MediaType(); err != nil {
		return err
	} else if mt == types.OCIManifestSchema1 {
		layerType = types.OCILayer
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithMediaType(layerType), tarball.WithCompressedCaching)
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return err
	}
	dig, err := img.Digest()
	if err != nil {
		return err
	}

	// 5. Push, and write the layout. Both read the base's layers: from the
	// registry on a cold cache (storing them as they stream by), from the
	// cache after that.
	if dstRef != nil {
		if err := remote.Write(dstRef, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("pushing %s: %w", dstRef, err)
		}
		fmt.Fprintf(stdout, "%s@%s\n", dstRef.Context(), dig)
	} else {
		fmt.Fprintln(stdout, dig)
	}
	if *layoutDir != "" {
		refName := "latest"
		if dstRef != nil {
			refName = dstRef.Identifier()
		}
		if err := scaffold.WriteLayout(*layoutDir, img, refName); err != nil {
			return fmt.Errorf("writing the layout %s: %w", *layoutDir, err)
		}
		fmt.Fprintf(stderr, "layout: %s (ref %q)\n", *layoutDir, refName)
	}

	// 6. Report what came from the registry and what from the cache.
	meter.Report(ctx, stderr, start)
	return nil
}

// layerSource returns the tree to put in the layer: dir, or the sample
// built into this example if dir is empty.
func layerSource(dir string) (fs.FS, error) {
	if dir == "" {
		return fs.Sub(sample, "sample")
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, scaffold.UsageError{Msg: fmt.Sprintf("-dir: %v", err)}
	} else if !fi.IsDir() {
		return nil, scaffold.UsageError{Msg: fmt.Sprintf("-dir: %s is not a directory", dir)}
	}
	return os.DirFS(dir), nil
}

// tarFS returns a tar of every directory, regular file and symlink in
// fsys, in lexical order, with fixed times and owners: the same tree gives
// the same bytes. Other file types (sockets, devices) are an error.
func tarFS(fsys fs.FS) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: path, Mode: int64(info.Mode().Perm()), ModTime: epoch}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, path+"/"
		case d.Type()&fs.ModeSymlink != 0:
			target, err := fs.ReadLink(fsys, path)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		case d.Type().IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
		default:
			return fmt.Errorf("%s: unsupported file type %s", path, d.Type())
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := fsys.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if n, err := io.Copy(tw, f); err != nil {
			return err
		} else if n != hdr.Size {
			return fmt.Errorf("%s: changed while being read", path)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
