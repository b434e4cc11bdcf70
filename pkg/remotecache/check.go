package remotecache

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/ocibuild/layercache/pkg/store"
)

// CheckReport says what Check found. Its JSON field names are stable.
type CheckReport struct {
	Images []ImageCheck `json:"images"` // one per reference, in the order given
	Blobs  int          `json:"blobs"`  // distinct blobs found present and whole
	Bytes  int64        `json:"bytes"`  // their bytes, hashed
}

// OK reports whether every image checked is whole in the cache.
func (r CheckReport) OK() bool {
	for _, im := range r.Images {
		if len(im.Problems) > 0 {
			return false
		}
	}
	return true
}

// ImageCheck is what Check found for one reference.
type ImageCheck struct {
	Ref       string    `json:"ref"`       // the reference checked, fully qualified
	Digest    string    `json:"digest"`    // of its manifest or index; "" if a tag was never warmed
	MediaType string    `json:"mediaType"` // of that manifest or index, when known
	Platforms []string  `json:"platforms"` // platforms of the index checked (present or not), for an index
	Problems  []Problem `json:"problems"`  // empty when a build can use the image offline
}

// Problem is one blob (or reference) a build would need and the cache
// cannot serve.
type Problem struct {
	Kind      string `json:"kind"`      // "ref", "index", "manifest", "config", "layer" or "platform"
	Digest    string `json:"digest"`    // the blob's ("" for a ref never warmed)
	MediaType string `json:"mediaType"` // as the descriptor that names it says ("" if none does)
	Platform  string `json:"platform"`  // os/arch[/variant] of the image it belongs to, when known
	Problem   string `json:"problem"`   // ProblemMissing, ProblemCorrupted or ProblemInvalid
	Error     string `json:"error"`     // what was found, in words
}

// What a Problem is.
const (
	// ProblemMissing: the cache does not hold the blob, a tag was never
	// warmed into it, or an index has no image for the platform.
	ProblemMissing = "missing"
	// ProblemCorrupted: the blob's bytes do not hash to its digest, or
	// what is at its name is not a regular file.
	ProblemCorrupted = "corrupted"
	// ProblemInvalid: the blob is whole but a pull cannot use it: a
	// manifest or config that does not parse, is larger than a pull
	// reads, or names a malformed digest; indexes nested too deep.
	ProblemInvalid = "invalid"
)

// Check tells, without touching the network, whether a build that pulls
// refs through the cache offline would find everything it reads: each
// tag is resolved from index.json (a digest reference needs no entry
// there), and the manifest or index, the platform's manifests, configs
// and layers are each re-hashed (store.Verify and store.Inspect). The
// platforms are chosen as Image and Warm choose them: WithPlatform
// (default linux/amd64), or WithAllPlatforms, which leaves attestation
// manifests out unless WithAttestations is given. Layers are hashed
// several at once (WithJobs); a blob shared by several images is hashed
// once.
//
// Check changes nothing: no blob is fetched, removed or marked as used,
// and a corrupted one stays in place (`layercache verify --repair`, or a
// Warm, heals it). Options about the registry are ignored. What it finds
// is in the report; the error is for what stopped it from looking (a
// cancelled ctx, an unreadable cache).
func Check(ctx context.Context, refs []name.Reference, s *store.Store, opts ...Option) (CheckReport, error) {
	o, err := makeOptions(append(opts, WithContext(ctx)))
	if err != nil {
		return CheckReport{}, err
	}
	c := &checker{s: s, o: o, blobs: map[digest.Digest]*blobCheck{}}
	rep := CheckReport{Images: []ImageCheck{}}
	var found []*imageFound
	for _, ref := range refs {
		im, err := c.checkRef(ctx, ref)
		if err != nil {
			return CheckReport{}, err
		}
		found = append(found, im)
	}
	// The layers of every image, each hashed once, several at once.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	for _, im := range found {
		for _, l := range im.layers {
			if _, ok := c.blobs[l.digest]; ok {
				continue
			}
			b := &blobCheck{}
			c.blobs[l.digest] = b
			g.Go(func() error {
				info, err := s.Stat(gctx, l.digest, store.VerifyFirst)
				b.size, b.err = info.Size, err
				return fatal(err)
			})
		}
	}
	if err := g.Wait(); err != nil {
		return CheckReport{}, err
	}
	for _, im := range found {
		for _, l := range im.layers {
			if err := c.blobs[l.digest].err; err != nil {
				im.problem("layer", l.digest.String(), l.mediaType, l.platform, err)
			}
		}
		rep.Images = append(rep.Images, im.ImageCheck)
	}
	for _, b := range c.blobs {
		if b.err == nil {
			rep.Blobs++
			rep.Bytes += b.size
		}
	}
	return rep, nil
}

// checker holds what one Check has hashed. Its map is used by the
// goroutine of Check only; the layer jobs write to their own blobCheck.
type checker struct {
	s     *store.Store
	o     *options
	blobs map[digest.Digest]*blobCheck // every blob looked at
}

// blobCheck is what hashing one blob found: its size when whole, or the
// store's error (wrapping ErrNotFound, ErrCorrupted or ErrTooLarge); and
// the bytes of a manifest, index or config.
type blobCheck struct {
	size int64
	err  error
	raw  []byte
}

// imageFound is one reference's check while it is being made: the
// problems so far, and the layers still to hash.
type imageFound struct {
	ImageCheck
	layers   []layerRef
	reported map[string]bool // digests with a problem: a blob shared by platforms is named once
}

type layerRef struct {
	digest    digest.Digest
	mediaType string
	platform  string
}

// problem adds a problem found with blob d (or with the ref, d == "").
func (im *imageFound) problem(kind, d, mediaType, platform string, err error) {
	if d != "" {
		if im.reported[d] {
			return
		}
		if im.reported == nil {
			im.reported = map[string]bool{}
		}
		im.reported[d] = true
	}
	p := Problem{Kind: kind, Digest: d, MediaType: mediaType, Platform: platform, Problem: ProblemInvalid, Error: err.Error()}
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, ErrOffline):
		p.Problem = ProblemMissing
	case errors.Is(err, store.ErrCorrupted):
		p.Problem = ProblemCorrupted
	}
	im.Problems = append(im.Problems, p)
}

// fatal returns err if it stops the check: anything but what the store
// says about the blob itself (missing, corrupted, too large to read).
func fatal(err error) error {
	if err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCorrupted) || errors.Is(err, store.ErrTooLarge) {
		return nil
	}
	return err
}

// small returns the manifest, index or config d, verified, from the
// store, without marking it used; a blob looked at before is not hashed
// again. The error is fatal (see fatal) or describes the blob.
func (c *checker) small(ctx context.Context, d digest.Digest) ([]byte, error) {
	if b, ok := c.blobs[d]; ok {
		return b.raw, b.err
	}
	raw, err := c.s.Get(ctx, d, store.Inspect)
	if ferr := fatal(err); ferr != nil {
		return nil, ferr
	}
	c.blobs[d] = &blobCheck{size: int64(len(raw)), err: err, raw: raw}
	return raw, err
}

// checkRef resolves ref offline and checks its manifests and configs;
// its layers are left in the result for Check to hash.
func (c *checker) checkRef(ctx context.Context, ref name.Reference) (*imageFound, error) {
	im := &imageFound{ImageCheck: ImageCheck{Ref: ref.Name(), Platforms: []string{}, Problems: []Problem{}}}
	var d digest.Digest
	switch r := ref.(type) {
	case name.Digest:
		dd, err := digest.Parse(r.DigestStr())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ref, store.ErrInvalidDigest)
		}
		d = dd
	default:
		desc, err := c.s.Resolve(ctx, ref.Name())
		if errors.Is(err, store.ErrNotFound) {
			im.problem("ref", "", "", "", fmt.Errorf("%s: the tag was never warmed into this cache: %w", ref, ErrOffline))
			return im, nil
		}
		if err != nil {
			return nil, err
		}
		d, im.MediaType = desc.Digest, desc.MediaType
	}
	im.Digest = d.String()
	raw, err := c.small(ctx, d)
	if err != nil {
		if ferr := fatal(err); ferr != nil {
			return nil, ferr
		}
		kind := "manifest"
		if types.MediaType(im.MediaType).IsIndex() { // as index.json says
			kind = "index"
		}
		im.problem(kind, d.String(), im.MediaType, "", err)
		return im, nil
	}
	desc := v1.Descriptor{MediaType: sniffMediaType(raw), Digest: toHash(d), Size: int64(len(raw))}
	im.MediaType = string(desc.MediaType)
	if !desc.MediaType.IsIndex() {
		return im, c.image(ctx, im, ref, desc, raw)
	}
	var x *v1.IndexManifest
	if x, err = c.index(im, ref, desc, raw); err != nil || x == nil {
		return im, err
	}
	if c.o.allPlatforms {
		return im, c.allImages(ctx, im, ref, desc, x, 0)
	}
	want := defaultPlatform
	if c.o.platform != nil {
		want = *c.o.platform
	}
	found, err := c.platform(ctx, im, ref, x, want, 0)
	if err == nil && !found {
		im.problem("platform", d.String(), im.MediaType, want.String(),
			fmt.Errorf("%s: no image for platform %s in index %s: %w", ref, want.String(), d, ErrOffline))
	}
	return im, err
}

// index parses an index as newIndex does; one that does not parse is a
// problem of im, and gives nil.
func (c *checker) index(im *imageFound, ref name.Reference, desc v1.Descriptor, raw []byte) (*v1.IndexManifest, error) {
	x, err := newIndex(nil, ref, desc, raw)
	if err != nil {
		im.problem("index", desc.Digest.String(), string(desc.MediaType), platformOf(desc), err)
		return nil, nil
	}
	return x.im, nil
}

// platform checks the first image of index x (or of an index it nests)
// that findPlatform would take for want, and reports whether there was
// one. A nested index that is missing or bad ends the search, as it
// fails a pull.
func (c *checker) platform(ctx context.Context, im *imageFound, ref name.Reference, x *v1.IndexManifest, want v1.Platform, depth int) (bool, error) {
	for _, child := range x.Manifests {
		if !selects(child, want, c.o.platform != nil) {
			continue
		}
		switch {
		case child.MediaType.IsImage():
			return true, c.child(ctx, im, ref, child, depth)
		case child.MediaType.IsIndex():
			cx, err := c.nested(ctx, im, ref, child, depth+1)
			if err != nil || cx == nil {
				return true, err
			}
			if found, err := c.platform(ctx, im, ref, cx, want, depth+1); found || err != nil {
				return found, err
			}
		}
	}
	return false, nil
}

// allImages checks every image of index x and of the indexes it nests,
// as indexImages takes them for Warm's WithAllPlatforms.
func (c *checker) allImages(ctx context.Context, im *imageFound, ref name.Reference, desc v1.Descriptor, x *v1.IndexManifest, depth int) error {
	for _, child := range x.Manifests {
		if IsAttestation(child) && !c.o.attestations {
			continue
		}
		switch {
		case child.MediaType.IsImage():
			if err := c.child(ctx, im, ref, child, depth); err != nil {
				return err
			}
		case child.MediaType.IsIndex():
			cx, err := c.nested(ctx, im, ref, child, depth+1)
			if err != nil {
				return err
			}
			if cx != nil {
				if err := c.allImages(ctx, im, ref, child, cx, depth+1); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// nested reads and parses the index child names, at depth below the top;
// one that cannot be used is a problem of im, and gives nil.
func (c *checker) nested(ctx context.Context, im *imageFound, ref name.Reference, child v1.Descriptor, depth int) (*v1.IndexManifest, error) {
	if depth >= maxIndexDepth {
		im.problem("index", child.Digest.String(), string(child.MediaType), platformOf(child),
			fmt.Errorf("%s: indexes nested more than %d deep at %s", ref, maxIndexDepth, child.Digest))
		return nil, nil
	}
	raw, err := c.childBlob(ctx, im, ref, "index", child)
	if raw == nil || err != nil {
		return nil, err
	}
	return c.index(im, ref, child, raw)
}

// child checks the image an index entry names.
func (c *checker) child(ctx context.Context, im *imageFound, ref name.Reference, child v1.Descriptor, depth int) error {
	if child.Platform != nil {
		im.Platforms = append(im.Platforms, child.Platform.String())
	}
	raw, err := c.childBlob(ctx, im, ref, "manifest", child)
	if raw == nil || err != nil {
		return err
	}
	return c.image(ctx, im, ref, child, raw)
}

// childBlob reads the manifest or index an index entry names, with the
// checks of childManifest; nil if it cannot be used (a problem of im).
func (c *checker) childBlob(ctx context.Context, im *imageFound, ref name.Reference, kind string, child v1.Descriptor) ([]byte, error) {
	d, err := toDigest(child.Digest)
	if err == nil && child.Size > maxManifestSize {
		err = fmt.Errorf("%s: manifest %s: descriptor says %d bytes: %w", ref, d, child.Size, errTooLarge)
	}
	if err == nil {
		var raw []byte
		if raw, err = c.small(ctx, d); err == nil {
			return raw, nil
		}
		if ferr := fatal(err); ferr != nil {
			return nil, ferr
		}
	}
	im.problem(kind, child.Digest.String(), string(child.MediaType), platformOf(child), err)
	return nil, nil
}

// image checks a manifest (parsed as newImage parses it) and its config,
// and queues its layers.
func (c *checker) image(ctx context.Context, im *imageFound, ref name.Reference, desc v1.Descriptor, raw []byte) error {
	platform := platformOf(desc)
	img, err := newImage(nil, ref, desc, raw)
	if err != nil {
		im.problem("manifest", desc.Digest.String(), string(desc.MediaType), platform, err)
		return nil
	}
	m := img.manifest
	cfg := m.Config
	cd, err := toDigest(cfg.Digest)
	if err == nil && cfg.Size > maxManifestSize {
		err = fmt.Errorf("%s: config %s: descriptor says %d bytes: %w", ref, cd, cfg.Size, errTooLarge)
	}
	var craw []byte
	if err == nil {
		craw, err = c.small(ctx, cd)
		if ferr := fatal(err); ferr != nil {
			return ferr
		}
	}
	if err == nil {
		var cf *v1.ConfigFile
		if cf, err = v1.ParseConfigFile(bytes.NewReader(craw)); err != nil {
			err = fmt.Errorf("%s: parsing config %s: %w", ref, cd, err)
		} else if platform == "" && cf.OS != "" {
			// An image that no index describes says its platform in
			// its config.
			platform = cf.Platform().String()
		}
	}
	if err != nil {
		im.problem("config", cfg.Digest.String(), string(cfg.MediaType), platform, err)
	}
	for _, l := range m.Layers {
		ld, err := toDigest(l.Digest)
		if err != nil {
			im.problem("layer", l.Digest.String(), string(l.MediaType), platform, err)
			continue
		}
		im.layers = append(im.layers, layerRef{digest: ld, mediaType: string(l.MediaType), platform: platform})
	}
	return nil
}

// platformOf is the platform an index entry names, or "".
func platformOf(d v1.Descriptor) string {
	if d.Platform == nil {
		return ""
	}
	return d.Platform.String()
}
