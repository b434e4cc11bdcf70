package remotecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/ocibuild/layercache/pkg/store"
)

// Report says what Warm did. Its JSON field names are stable.
type Report struct {
	Ref       string   `json:"ref"`       // the reference warmed, fully qualified
	Digest    string   `json:"digest"`    // digest of its manifest or index
	MediaType string   `json:"mediaType"` // media type of that manifest or index
	Platforms []string `json:"platforms"` // platforms warmed, for an index
	Offline   bool     `json:"offline"`   // the tag was resolved from index.json
	Cached    Tally    `json:"cached"`    // blobs found in the cache, verified
	Fetched   Tally    `json:"fetched"`   // blobs fetched from the registry
	// Hosts splits Fetched by where each blob came from (a mirror's URL,
	// or the upstream's registry), for a pull with mirrors (WithMirrors).
	Hosts    map[string]Tally `json:"hosts,omitempty"`
	Duration time.Duration    `json:"durationNs"`
}

// Tally counts blobs and their bytes.
type Tally struct {
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
}

// Progress is one event of Warm's progress callback (WithProgress).
type Progress struct {
	Digest   digest.Digest
	Kind     string // "layer"; manifests and configs are small and not reported
	Total    int64  // expected size in bytes
	Complete int64  // bytes done so far
	Done     bool   // the blob is in the cache (or failed, see Err)
	Cached   bool   // it was already cached and verified
	Err      error  // set on the final event of a blob that failed
}

// Warm makes sure the cache holds every blob of the image ref names: its
// manifest (and index), config and layers. A blob already cached is
// verified (re-hashed) and kept; a corrupted one is fetched again; a
// missing one is fetched from the registry. Layers are handled in
// parallel (WithJobs). For an index, one platform is warmed (WithPlatform,
// default linux/amd64), or all of them with WithAllPlatforms.
//
// The image is recorded in index.json under ref's full name with the
// digest of its manifest or index, so that later pulls of the tag can
// resolve offline: a tag the cache had not recorded as soon as its
// manifest is fetched, as Image does, so that other pulls of it need not
// wait for this Warm; a tag that moved only on success, so that until
// then it resolves offline to the image the cache holds whole. Warm needs
// a writable cache: a read-only or full cache is an error here, unlike on
// the pull path.
func Warm(ctx context.Context, ref name.Reference, s *store.Store, opts ...Option) (Report, error) {
	start := time.Now()
	o, err := makeOptions(append(opts, WithContext(ctx)))
	if err != nil {
		return Report{}, err
	}
	p := newPuller(s, o, ref.Context())
	p.stats.record = nil // recorded once, at the end
	rep := Report{Ref: ref.Name()}
	desc, raw, release, err := p.resolve(ctx, ref)
	if err != nil {
		return rep, err
	}
	defer release() // on an error; at once below otherwise
	_, rerr := s.Resolve(ctx, ref.Name())
	newTag := errors.Is(rerr, store.ErrNotFound)
	rep.Digest = desc.Digest.String()
	rep.MediaType = string(desc.MediaType)
	rep.Offline = p.offline

	var images []*image
	if desc.MediaType.IsIndex() {
		if o.allPlatforms {
			if images, err = p.indexImages(ctx, ref, desc, raw, 0); err != nil {
				return rep, err
			}
		} else {
			img, err := p.platformImage(ctx, ref, desc, raw)
			if err != nil {
				return rep, err
			}
			images = append(images, img.(*image))
		}
		for _, img := range images {
			if img.desc.Platform != nil {
				rep.Platforms = append(rep.Platforms, img.desc.Platform.String())
			}
		}
	} else {
		img, err := newImage(p, ref, desc, raw)
		if err != nil {
			return rep, err
		}
		images = append(images, img)
	}
	// A tag the cache had not recorded is recorded now that its
	// manifests are in, as Image does, and its lock released: other
	// pulls of the tag then ask with a HEAD and find the manifests
	// stored, instead of waiting for this Warm's blobs. A tag that moved
	// is recorded at the end, once the new image is in: until then it
	// resolves offline to the old, whole one.
	if newTag {
		p.recordRef(ctx, ref, desc)
	}
	release()

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	// The jobs fetch side by side, but hash cached blobs one per core:
	// more hashes than cores only switch between them, and evict each
	// other's chunks from the CPU's caches (bench/ row 9).
	hashSlots := make(chan struct{}, runtime.GOMAXPROCS(0))
	seen := map[v1.Hash]bool{}
	for _, img := range images {
		// Configs are fetched alongside the layers: on a registry far
		// away, each round trip saved is worth as much as a layer.
		g.Go(func() error {
			if _, err := img.RawConfigFile(); err != nil {
				return fmt.Errorf("warm %s: %w", ref, err)
			}
			return nil
		})
		for _, l := range img.manifest.Layers {
			if seen[l.Digest] {
				continue // layers shared between platforms are warmed once
			}
			seen[l.Digest] = true
			l := l
			g.Go(func() error {
				if err := p.warmLayer(gctx, l, hashSlots); err != nil {
					return fmt.Errorf("warm %s: layer %s: %w", ref, l.Digest, err)
				}
				return nil
			})
		}
	}
	// On an error, errgroup has cancelled the other jobs and Wait waits
	// for them: nothing writes to the store once Warm has returned.
	if err := g.Wait(); err != nil {
		return rep, err
	}
	// index.json is rewritten (durably, so with fsyncs) only when the ref
	// is new or moved: warming a warm image stays a read-only operation.
	// A new tag recorded above and moved since by another pull is left
	// to that pull's newer digest.
	d := digest.Digest(desc.Digest.String())
	if cur, err := s.Resolve(ctx, ref.Name()); err != nil || (cur.Digest != d && !newTag) {
		err := s.Tag(ctx, ref.Name(), ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: d, Size: desc.Size})
		if err != nil {
			return rep, fmt.Errorf("warm %s: recording the ref in index.json: %w", ref, err)
		}
	}
	rep.Cached.Blobs, rep.Cached.Bytes, rep.Fetched.Blobs, rep.Fetched.Bytes = p.stats.snapshot()
	if len(p.hosts()) > 1 {
		rep.Hosts = p.stats.hostTallies()
	}
	// Failures (a read-only cache) are ignored: counters are advice.
	_ = s.AddStats(context.WithoutCancel(ctx), store.Stats{
		Hits: int64(rep.Cached.Blobs), HitBytes: rep.Cached.Bytes,
		Misses: int64(rep.Fetched.Blobs), MissBytes: rep.Fetched.Bytes,
		Hosts: storeHosts(rep.Hosts),
	})
	rep.Duration = time.Since(start)
	return rep, nil
}

// warmLayer makes sure one layer is cached and verified. Its hash of a
// cached blob waits for one of hashSlots.
func (p *puller) warmLayer(ctx context.Context, l v1.Descriptor, hashSlots chan struct{}) error {
	d, err := toDigest(l.Digest)
	if err != nil {
		return err
	}
	ev := Progress{Digest: d, Kind: "layer", Total: l.Size}
	p.report(ev)
	if ok, err := p.verifyCachedIn(ctx, d, hashSlots); ok || err != nil {
		ev.Complete, ev.Done, ev.Cached, ev.Err = l.Size, true, ok, err
		p.report(ev)
		return err
	}
	if p.offline {
		err := fmt.Errorf("blob %s: %w", d, ErrOffline)
		ev.Done, ev.Err = true, err
		p.report(ev)
		return err
	}
	cached, err := p.fetchInto(ctx, d, l.Size, func(n int64) {
		ev.Complete = n
		p.report(ev)
	})
	ev.Complete, ev.Done, ev.Cached, ev.Err = l.Size, true, cached, err
	p.report(ev)
	return err
}

// verifyCachedIn is verifyCached once one of slots is free.
func (p *puller) verifyCachedIn(ctx context.Context, d digest.Digest, slots chan struct{}) (bool, error) {
	select {
	case slots <- struct{}{}:
		defer func() { <-slots }()
	case <-ctx.Done():
		return false, ctx.Err()
	}
	return p.verifyCached(ctx, d)
}

// verifyCached hashes the cached blob d. It reports true if it is cached
// and whole; a corrupted one is deleted, and a missing one reported as
// false with no error.
func (p *puller) verifyCached(ctx context.Context, d digest.Digest) (bool, error) {
	info, err := p.s.Stat(ctx, d, store.VerifyFirst)
	switch {
	case err == nil:
		p.stats.hit(info.Size)
		return true, nil
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	case errors.Is(err, store.ErrCorrupted):
		p.o.logger.Warn("cached blob was corrupted; removing it and fetching it again", "digest", d, "err", err)
		if derr := p.s.Delete(ctx, d); derr != nil && !errors.Is(derr, store.ErrNotFound) {
			return false, derr
		}
		return false, nil
	default:
		return false, err
	}
}

// copyBufPool holds the copy buffers of downloads that cannot go straight
// into a store Writer (teeReader.WriteTo): fresh buffers for each would be
// garbage for the GC to clear.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// fetchInto downloads d into the store through the fetch step
// (fetchstep.go). It reports true if, once the blob's lock was taken,
// another goroutine or process had already stored it.
func (p *puller) fetchInto(ctx context.Context, d digest.Digest, size int64, progress func(int64)) (bool, error) {
	step := p.step(d, size)
	step.drain, step.strict = true, true
	step.hit = nil // Warm counts its own hits (verifyCached)
	rc, cached, err := step.open(ctx)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	if cached {
		// Another goroutine or process stored it meanwhile, and open
		// verified it: nothing to read.
		p.stats.hit(size)
		return true, nil
	}
	// The Writer reads the body straight into the buffers its file is
	// written from (teeReader.WriteTo); progressWriter reports and checks
	// ctx as the bytes pass.
	pw := &progressWriter{ctx: ctx, report: progress}
	if t, ok := rc.(*teeReader); ok {
		pw.n = t.delivered // bytes of a partial file that were not read (fetchStep.open)
	}
	if _, err := io.Copy(pw, rc); err != nil {
		return false, err
	}
	return false, nil
}

// progressWriter discards what it is given, reports how many bytes it was
// given so far, and stops with ctx's error once ctx is done.
type progressWriter struct {
	ctx    context.Context
	n      int64
	report func(int64)
}

func (w *progressWriter) Write(b []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	w.n += int64(len(b))
	if w.report != nil {
		w.report(w.n)
	}
	return len(b), nil
}

func (p *puller) report(ev Progress) {
	if p.o.progress != nil {
		p.o.progress(ev)
	}
}
