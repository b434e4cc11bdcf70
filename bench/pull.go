package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// warmInto warms ref into a store in dir, untimed setup.
func warmInto(ctx context.Context, dir string, ref name.Reference) error {
	s, err := store.Open(dir)
	if err != nil {
		return err
	}
	_, err = remotecache.Warm(ctx, ref, s)
	return err
}

// freshStore empties dir and syncs the file systems, so that a run starts
// from a cold cache with no dirty pages of an earlier run being written
// back under it.
func freshStore(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	syscall.Sync()
	return nil
}

// coldPull: a pull by tag through an empty cache (miss, populate), reading
// every layer's Compressed fully, against a plain remote.Image pull
// reading the same; and the same with WithDurable.
func (b *bench) coldPull(ctx context.Context, kind string) error {
	im, err := b.image(ctx, kind)
	if err != nil {
		return err
	}
	ref := im.tag
	dir := filepath.Join(b.work, "cold-"+kind)
	n := im.layerBytes()
	var s *store.Store
	openFresh := func(opts ...store.Option) func(context.Context) error {
		return func(context.Context) error {
			if err := freshStore(dir); err != nil {
				return err
			}
			var err error
			s, err = store.Open(dir, opts...)
			return err
		}
	}
	pull := func(ctx context.Context) error {
		img, err := remotecache.Image(ref, s, remotecache.WithContext(ctx))
		if err != nil {
			return err
		}
		if err := drainCompressed(img); err != nil {
			return err
		}
		return checkStored(ctx, s, im)
	}
	lib := variant{name: "remotecache.Image, cold", unit: unitSeconds, bytes: n, inProcess: true,
		prep: openFresh(), run: timed(pull)}
	durable := variant{name: "remotecache.Image, cold, WithDurable", unit: unitSeconds, bytes: n, inProcess: true,
		prep: openFresh(store.WithDurable()), run: timed(pull)}
	plain := variant{name: "remote.Image, no cache", unit: unitSeconds, bytes: n, inProcess: true,
		prep: func(context.Context) error { syscall.Sync(); return nil },
		run: timed(func(ctx context.Context) error {
			img, err := remote.Image(ref, remote.WithContext(ctx))
			if err != nil {
				return err
			}
			return drainCompressed(img)
		})}
	st, err := b.sample(ctx, "cold pull "+kind, lib, durable, plain)
	os.RemoveAll(dir)
	if err != nil {
		return err
	}
	b.addRow(id("3", kind), "cold pull through the cache, default durability (A) vs plain remote.Image (B)", kind,
		st[0], st[2], atMostTimes(1.25, "≤ 1.25", "A time ÷ B time"))
	b.addRow(id("3", kind)+"'", "cold pull through the cache, WithDurable() (A) vs plain remote.Image (B)", kind,
		st[1], st[2], infoTimes("A time ÷ B time"))
	return nil
}

// checkStored makes sure a cold pull left every layer in the store, so a
// figure never times a pull that cached nothing. It costs four stat(2)
// calls of the timed run.
func checkStored(ctx context.Context, s *store.Store, im *imageInfo) error {
	for _, l := range im.layers {
		d, err := digest.Parse(l.digest.String())
		if err != nil {
			return err
		}
		if _, err := s.Stat(ctx, d); err != nil {
			return fmt.Errorf("after the pull: %w", err)
		}
	}
	return nil
}

// latencyWarm: Warm of an 8-layer image, cold, through the proxy that adds
// latency to every request: default jobs against WithJobs(1).
func (b *bench) latencyWarm(ctx context.Context) error {
	im, err := b.image(ctx, "latency")
	if err != nil {
		return err
	}
	ref, err := im.byTag(b.reg.slowHost)
	if err != nil {
		return err
	}
	dir := filepath.Join(b.work, "latency")
	var s *store.Store
	prep := func(context.Context) error {
		if err := freshStore(dir); err != nil {
			return err
		}
		s, err = store.Open(dir)
		return err
	}
	warm := func(opts ...remotecache.Option) func(context.Context) error {
		return func(ctx context.Context) error {
			rep, err := remotecache.Warm(ctx, ref, s, opts...)
			if err == nil && rep.Fetched.Blobs < len(im.layers) {
				err = fmt.Errorf("warm fetched %d blobs, want at least %d", rep.Fetched.Blobs, len(im.layers))
			}
			return err
		}
	}
	n := im.layerBytes()
	par := variant{name: "Warm, default jobs", unit: unitSeconds, bytes: n, inProcess: true, prep: prep, run: timed(warm())}
	seq := variant{name: "Warm, WithJobs(1)", unit: unitSeconds, bytes: n, inProcess: true, prep: prep, run: timed(warm(remotecache.WithJobs(1)))}
	st, err := b.sample(ctx, "latency", par, seq)
	os.RemoveAll(dir)
	if err != nil {
		return err
	}
	// How many requests a warm makes: the latency each one adds is the
	// figure's story.
	if err := prep(ctx); err != nil {
		return err
	}
	if err := b.reg.reset(); err != nil {
		return err
	}
	if err := warm()(ctx); err != nil {
		return err
	}
	if c, err := b.reg.counters(); err == nil {
		b.note(fmt.Sprintf("row 8: a cold Warm of the %d-layer image makes %d registry requests (%d blob GETs); at %s each, sequential requests cost %s",
			len(im.layers), c.Requests, c.BlobGets, latency, time.Duration(c.Requests)*latency))
	}
	b.addRow("8", fmt.Sprintf("Warm of %d layers, cold, registry +%s per request: default jobs (A) vs WithJobs(1) (B)", len(im.layers), latency), kindRandom,
		st[0], st[1], speedAtLeast(3, "≥ 3"))
	return nil
}

// cachedWarm: Warm of a fully cached 4-layer image, every layer verified,
// against the single-core ideal verified read of the same files.
func (b *bench) cachedWarm(ctx context.Context) error {
	im, s, err := b.filledStore(ctx, kindRandom)
	if err != nil {
		return err
	}
	files := b.layerFiles(kindRandom)
	n := im.layerBytes()
	cached := []string{b.stores[kindRandom]}
	warm := variant{name: "Warm, cached, default jobs", unit: unitSeconds, bytes: n, inProcess: true, files: cached,
		run: timed(func(ctx context.Context) error {
			rep, err := remotecache.Warm(ctx, im.tag, s)
			if err == nil && rep.Fetched.Blobs > 0 {
				err = fmt.Errorf("warm of a cached image fetched %d blobs", rep.Fetched.Blobs)
			}
			return err
		})}
	ideal := variant{name: "ideal read+sha256, one core", unit: unitSeconds, bytes: n, files: cached, inProcess: true,
		run: timed(func(context.Context) error { return idealRead(files) })}
	idealAll := variant{name: fmt.Sprintf("ideal read+sha256, %d goroutines", numCPU()), unit: unitSeconds, bytes: n, files: cached, inProcess: true,
		run: timed(func(context.Context) error { return idealReadParallel(files, numCPU()) })}
	st, err := b.sample(ctx, "cached warm", warm, ideal, idealAll)
	if err != nil {
		return err
	}
	// Against the ideal on every core, the row holds on any number of
	// cores; the single-core ideal is context (issue 13).
	b.addRow("9", fmt.Sprintf("Warm of a fully cached %d-layer image (A) vs the ideal verified read on %d goroutines, one per core (B)", len(im.layers), numCPU()), kindRandom,
		st[0], st[2], speedAtLeast(0.9, "≥ 0.9"))
	b.addRow("9'", fmt.Sprintf("Warm of a fully cached %d-layer image (A) vs single-core ideal verified read (B), %d cores", len(im.layers), numCPU()), kindRandom,
		st[0], st[1], infoSpeed())
	return nil
}
