package remotecache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/pkg/store"
)

// defaultPlatform is the platform chosen from an index when none is
// given, as in ggcr's remote.Image.
var defaultPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// Image returns the image ref names, with its manifest, config and layers
// served from the store s first and from the registry only on a miss.
// Every read is verified against its digest; a corrupted cached blob is
// removed and fetched again within the same call. If ref names an image
// index, the image of the platform (WithPlatform, default linux/amd64) is
// returned.
//
// The manifest is resolved at once; config and layers are read lazily, with
// the context given by WithContext. The layers are remote.MountableLayer
// values, so that remote.Write to another repository of the same registry
// mounts them instead of uploading them.
func Image(ref name.Reference, s *store.Store, opts ...Option) (v1.Image, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	p := newPuller(s, o, ref.Context())
	desc, raw, release, err := p.resolve(o.ctx, ref)
	if err != nil {
		return nil, err
	}
	// The tag is recorded only once what it names parses: a tag that
	// names no usable manifest must not resolve offline later.
	var img *image
	if desc.MediaType.IsIndex() {
		_, err = newIndex(p, ref, desc, raw)
	} else {
		img, err = newImage(p, ref, desc, raw)
	}
	if err != nil {
		release()
		return nil, err
	}
	p.recordRef(o.ctx, ref, desc)
	release()
	if img == nil {
		return p.platformImage(o.ctx, ref, desc, raw)
	}
	return img, nil
}

// recordRef notes in index.json what a tag resolved to online, so that a
// later pull of the same tag can resolve it offline once the registry is
// unreachable, as after a Warm. index.json is rewritten only when the tag
// is new or moved. A cache that cannot be written is not an error here.
func (p *puller) recordRef(ctx context.Context, ref name.Reference, desc v1.Descriptor) {
	if _, isTag := ref.(name.Tag); !isTag || p.offline {
		return
	}
	if cur, err := p.s.Resolve(ctx, ref.Name()); err == nil && cur.Digest.String() == desc.Digest.String() {
		return
	}
	err := p.s.Tag(ctx, ref.Name(), ocispec.Descriptor{
		MediaType: string(desc.MediaType),
		Digest:    digest.Digest(desc.Digest.String()),
		Size:      desc.Size,
	})
	if err != nil {
		p.noteStoreWriteError(digest.Digest(desc.Digest.String()), err)
	}
}

// maxIndexDepth bounds how deep platformImage follows indexes nested in
// indexes, so that a hostile registry cannot send a pull round in a loop.
const maxIndexDepth = 4

// platformImage picks the image of the wanted platform from an index,
// following nested indexes (an index of indexes) as ggcr's remote.Image
// does.
func (p *puller) platformImage(ctx context.Context, ref name.Reference, desc v1.Descriptor, raw []byte) (v1.Image, error) {
	want := defaultPlatform
	if p.o.platform != nil {
		want = *p.o.platform
	}
	img, err := p.findPlatform(ctx, ref, desc, raw, want, 0)
	if err != nil {
		return nil, err
	}
	if img == nil {
		return nil, fmt.Errorf("%s: no image for platform %s in index %s", ref, want.String(), desc.Digest)
	}
	return img, nil
}

// findPlatform returns the first image of index raw (or of an index it
// nests) that satisfies want, or nil if there is none.
func (p *puller) findPlatform(ctx context.Context, ref name.Reference, desc v1.Descriptor, raw []byte, want v1.Platform, depth int) (v1.Image, error) {
	x, err := newIndex(p, ref, desc, raw)
	if err != nil {
		return nil, err
	}
	for _, child := range x.im.Manifests {
		if !selects(child, want, p.o.platform != nil) {
			continue
		}
		switch {
		case child.MediaType.IsImage():
			return p.childImage(ctx, ref, child)
		case child.MediaType.IsIndex():
			craw, err := p.nestedIndex(ctx, ref, child, depth+1)
			if err != nil {
				return nil, err
			}
			img, err := p.findPlatform(ctx, ref, child, craw, want, depth+1)
			if img != nil || err != nil {
				return img, err
			}
		}
	}
	return nil, nil
}

// nestedIndex returns the index a descriptor of an index points at, at
// depth below the top.
func (p *puller) nestedIndex(ctx context.Context, ref name.Reference, child v1.Descriptor, depth int) ([]byte, error) {
	if depth >= maxIndexDepth {
		return nil, fmt.Errorf("%s: indexes nested more than %d deep at %s", ref, maxIndexDepth, child.Digest)
	}
	return p.childManifest(ctx, ref, child)
}

// selects reports whether findPlatform takes the index entry child for
// the platform want; explicit is whether want was asked for (WithPlatform)
// rather than the default, which an entry without a platform also
// satisfies.
func selects(child v1.Descriptor, want v1.Platform, explicit bool) bool {
	if child.Platform == nil {
		return !explicit
	}
	return child.Platform.Satisfies(want)
}

// indexImages returns every image of index raw and of the indexes it
// nests, for Warm's WithAllPlatforms: attestation manifests only with
// WithAttestations.
func (p *puller) indexImages(ctx context.Context, ref name.Reference, desc v1.Descriptor, raw []byte, depth int) ([]*image, error) {
	x, err := newIndex(p, ref, desc, raw)
	if err != nil {
		return nil, err
	}
	var out []*image
	for _, child := range x.im.Manifests {
		if IsAttestation(child) && !p.o.attestations {
			continue
		}
		switch {
		case child.MediaType.IsImage():
			img, err := p.childImage(ctx, ref, child)
			if err != nil {
				return nil, err
			}
			out = append(out, img.(*image))
		case child.MediaType.IsIndex():
			craw, err := p.nestedIndex(ctx, ref, child, depth+1)
			if err != nil {
				return nil, err
			}
			imgs, err := p.indexImages(ctx, ref, child, craw, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, imgs...)
		}
	}
	return out, nil
}

// childManifest returns the manifest or index a descriptor of an index
// points at. A descriptor that says the manifest is larger than any
// manifest the cache reads is refused before anything is fetched.
func (p *puller) childManifest(ctx context.Context, ref name.Reference, child v1.Descriptor) ([]byte, error) {
	d, err := toDigest(child.Digest)
	if err != nil {
		return nil, err
	}
	if child.Size > maxManifestSize {
		return nil, fmt.Errorf("%s: manifest %s: descriptor says %d bytes: %w", ref, d, child.Size, errTooLarge)
	}
	raw, err := p.manifest(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return raw, nil
}

// childImage returns the image a descriptor of an index points at.
func (p *puller) childImage(ctx context.Context, ref name.Reference, child v1.Descriptor) (v1.Image, error) {
	raw, err := p.childManifest(ctx, ref, child)
	if err != nil {
		return nil, err
	}
	return newImage(p, ref, child, raw)
}

// image is a v1.Image whose blobs come through the puller.
type image struct {
	p        *puller
	ref      name.Reference
	desc     v1.Descriptor
	raw      []byte
	manifest *v1.Manifest

	cfgOnce sync.Once
	cfg     []byte
	cfgErr  error
	cfgFile *v1.ConfigFile
}

var (
	_ v1.Image                  = (*image)(nil)
	_ partial.Describable       = (*image)(nil)
	_ partial.WithRawConfigFile = (*image)(nil)
)

func newImage(p *puller, ref name.Reference, desc v1.Descriptor, raw []byte) (*image, error) {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err == nil {
		err = checkManifest(m.SchemaVersion, desc.MediaType)
	}
	if err == nil && m.Config.Digest.Hex == "" {
		err = errors.New("no config")
	}
	if err == nil {
		err = checkSizes(append([]v1.Descriptor{m.Config}, m.Layers...))
	}
	if err != nil {
		return nil, fmt.Errorf("%s: parsing manifest %s: %w", ref, desc.Digest, err)
	}
	if desc.MediaType == "" {
		desc.MediaType = m.MediaType
	}
	if desc.MediaType == "" {
		desc.MediaType = types.OCIManifestSchema1
	}
	return &image{p: p, ref: ref, desc: desc, raw: raw, manifest: m}, nil
}

// checkSizes refuses descriptors with a negative size: ggcr does, and a
// size is what the bytes a registry sends are held to.
func checkSizes(descs []v1.Descriptor) error {
	for _, d := range descs {
		if d.Size < 0 {
			return fmt.Errorf("descriptor of %s has a negative size %d", d.Digest, d.Size)
		}
	}
	return nil
}

// checkManifest refuses what parses as JSON but is no manifest of schema
// 2 (OCI's and Docker's): a JSON null, an empty object, a Docker schema 1
// manifest, which ggcr's remote.Image refuses too.
func checkManifest(schemaVersion int64, mt types.MediaType) error {
	switch {
	case mt == types.DockerManifestSchema1 || mt == types.DockerManifestSchema1Signed || schemaVersion == 1:
		return errors.New("docker schema 1 manifests are not supported")
	case schemaVersion != 2:
		return fmt.Errorf("schemaVersion %d, want 2", schemaVersion)
	}
	return nil
}

func (i *image) ctx() context.Context { return i.p.o.ctx }

// RawManifest implements v1.Image.
func (i *image) RawManifest() ([]byte, error) { return i.raw, nil }

// Manifest implements v1.Image.
func (i *image) Manifest() (*v1.Manifest, error) { return i.manifest.DeepCopy(), nil }

// MediaType implements v1.Image.
func (i *image) MediaType() (types.MediaType, error) { return i.desc.MediaType, nil }

// Digest implements v1.Image.
func (i *image) Digest() (v1.Hash, error) { return i.desc.Digest, nil }

// Size implements v1.Image.
func (i *image) Size() (int64, error) { return int64(len(i.raw)), nil }

// Descriptor returns the image's descriptor, with its platform when it
// came from an index. See partial.Descriptor.
func (i *image) Descriptor() (*v1.Descriptor, error) {
	d := i.desc
	return &d, nil
}

// RawConfigFile implements v1.Image: the config blob, from the store or
// the registry, verified against the manifest's config digest.
func (i *image) RawConfigFile() ([]byte, error) {
	i.cfgOnce.Do(func() {
		d, err := toDigest(i.manifest.Config.Digest)
		if err != nil {
			i.cfgErr = err
			return
		}
		if size := i.manifest.Config.Size; size > maxManifestSize {
			i.cfgErr = fmt.Errorf("%s: config %s: descriptor says %d bytes: %w", i.ref, d, size, errTooLarge)
			return
		}
		i.cfg, i.cfgErr = i.p.config(i.ctx(), d)
		if i.cfgErr == nil {
			i.cfgFile, i.cfgErr = v1.ParseConfigFile(bytes.NewReader(i.cfg))
			if i.cfgErr != nil {
				i.cfgErr = fmt.Errorf("%s: parsing config %s: %w", i.ref, d, i.cfgErr)
			}
		}
	})
	return i.cfg, i.cfgErr
}

// ConfigFile implements v1.Image.
func (i *image) ConfigFile() (*v1.ConfigFile, error) {
	if _, err := i.RawConfigFile(); err != nil {
		return nil, err
	}
	return i.cfgFile.DeepCopy(), nil
}

// ConfigName implements v1.Image.
func (i *image) ConfigName() (v1.Hash, error) { return i.manifest.Config.Digest, nil }

// Layers implements v1.Image. Each layer is a *remote.MountableLayer.
func (i *image) Layers() ([]v1.Layer, error) {
	out := make([]v1.Layer, 0, len(i.manifest.Layers))
	for idx := range i.manifest.Layers {
		out = append(out, i.layerAt(idx))
	}
	return out, nil
}

func (i *image) layerAt(idx int) v1.Layer {
	return &remote.MountableLayer{
		Layer:     &layer{img: i, index: idx, desc: i.manifest.Layers[idx]},
		Reference: i.ref,
	}
}

// LayerByDigest implements v1.Image. The config digest gives the config as
// a layer, as in ggcr.
func (i *image) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	for idx, l := range i.manifest.Layers {
		if l.Digest == h {
			return i.layerAt(idx), nil
		}
	}
	if h == i.manifest.Config.Digest {
		return partial.ConfigLayer(i)
	}
	return nil, fmt.Errorf("%s: image %s has no layer %s", i.ref, i.desc.Digest, h)
}

// LayerByDiffID implements v1.Image.
func (i *image) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	cf, err := i.ConfigFile()
	if err != nil {
		return nil, err
	}
	for idx, diffID := range cf.RootFS.DiffIDs {
		if diffID == h && idx < len(i.manifest.Layers) {
			return i.layerAt(idx), nil
		}
	}
	return nil, fmt.Errorf("%s: image %s has no layer with diff ID %s", i.ref, i.desc.Digest, h)
}
