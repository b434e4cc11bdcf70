package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"time"

	"github.com/ocibuild/layercache/pkg/store"
)

// setup builds the tools the figures run. The images are built when a
// set first needs them. None of it is measured.
func (b *bench) setup(ctx context.Context) error {
	for _, tool := range []struct {
		path *string
		pkg  string
	}{{&b.cli, "./cmd/layercache"}, {&b.rusage, "./bench/rusage"}} {
		if *tool.path != "" {
			continue
		}
		*tool.path = filepath.Join(b.work, filepath.Base(tool.pkg))
		b.logf("building %s", *tool.path)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", *tool.path, tool.pkg)
		cmd.Stdout, cmd.Stderr = b.stderr, b.stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building %s (run from the module root, or pass -cli and -rusage): %w", tool.pkg, err)
		}
	}
	b.seed = uint64(time.Now().UnixNano())
	return nil
}

// imageNames are the images the figures use, in the order of the report.
var imageNames = []string{kindRandom, kindRealistic, "rss", "latency", realisticZstd}

// realisticZstd is the realistic image with zstd layers.
const realisticZstd = "realistic-zstd"

// spec is what image name is made of in this mode.
func (b *bench) spec(name string) imageSpec {
	switch name {
	case "rss":
		return imageSpec{name: name, kind: kindRandom, layers: 1, layerSize: b.sizes.rssLayer}
	case "latency":
		return imageSpec{name: name, kind: kindRandom, layers: b.sizes.latencyLayers, layerSize: b.sizes.latencySize}
	case realisticZstd:
		return imageSpec{name: name, kind: kindRealistic, layers: b.sizes.layers, layerSize: b.sizes.layerSize, zstd: true}
	default:
		return imageSpec{name: name, kind: name, layers: b.sizes.layers, layerSize: b.sizes.layerSize}
	}
}

// image returns the image name, building and pushing it on first use, so
// that a run of a few sets (-only) builds only what they need. Building
// is not measured.
func (b *bench) image(ctx context.Context, name string) (*imageInfo, error) {
	if im := b.images[name]; im != nil {
		return im, nil
	}
	start := time.Now()
	im, err := buildAndPush(ctx, b.reg.host, b.spec(name), b.seed+uint64(slices.Index(imageNames, name)))
	if err != nil {
		return nil, err
	}
	b.images[name] = im
	b.imageList = append(b.imageList, im)
	b.logf("pushed %-10s %d layers, %s compressed, %s uncompressed, in %s", name, len(im.layers),
		formatValue(float64(im.layerBytes()), unitBytes), formatValue(float64(im.uncompressedBytes()), unitBytes), time.Since(start).Round(100*time.Millisecond))
	// The layers' bytes are garbage now; give them back before measuring.
	runtime.GC()
	debug.FreeOSMemory()
	return im, nil
}

// filledStore returns image name and a store that holds it, warmed on
// first use (not measured). The warm-hit figures read it.
func (b *bench) filledStore(ctx context.Context, name string) (*imageInfo, *store.Store, error) {
	im, err := b.image(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	dir, ok := b.stores[name]
	if !ok {
		dir = filepath.Join(b.work, "store-"+name)
		if err := warmInto(ctx, dir, im.tag); err != nil {
			return nil, nil, fmt.Errorf("filling the %s store: %w", name, err)
		}
		b.stores[name] = dir
	}
	s, err := store.Open(dir)
	return im, s, err
}
