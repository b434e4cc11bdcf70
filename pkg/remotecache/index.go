package remotecache

import (
	"bytes"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ocibuild/layercache/pkg/store"
)

// Index returns the image index ref names, with its manifests, configs and
// layers served from the store s first and from the registry only on a
// miss, as Image does. It fails if ref names an image, not an index.
func Index(ref name.Reference, s *store.Store, opts ...Option) (v1.ImageIndex, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	p := newPuller(s, o, ref.Context())
	desc, raw, release, err := p.resolve(o.ctx, ref)
	if err != nil {
		return nil, err
	}
	defer release()
	if !desc.MediaType.IsIndex() {
		return nil, fmt.Errorf("%s: %s is an image (%s), not an index", ref, desc.Digest, desc.MediaType)
	}
	x, err := newIndex(p, ref, desc, raw)
	if err != nil {
		return nil, err
	}
	p.recordRef(o.ctx, ref, desc)
	return x, nil
}

// index is a v1.ImageIndex whose children come through the puller.
type index struct {
	p    *puller
	ref  name.Reference
	desc v1.Descriptor
	raw  []byte
	im   *v1.IndexManifest
}

var (
	_ v1.ImageIndex       = (*index)(nil)
	_ partial.Describable = (*index)(nil)
)

func newIndex(p *puller, ref name.Reference, desc v1.Descriptor, raw []byte) (*index, error) {
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err == nil {
		err = checkManifest(im.SchemaVersion, desc.MediaType)
	}
	if err == nil {
		err = checkSizes(im.Manifests)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: parsing index %s: %w", ref, desc.Digest, err)
	}
	if desc.MediaType == "" {
		desc.MediaType = im.MediaType
	}
	if desc.MediaType == "" {
		desc.MediaType = types.OCIImageIndex
	}
	return &index{p: p, ref: ref, desc: desc, raw: raw, im: im}, nil
}

// MediaType implements v1.ImageIndex.
func (x *index) MediaType() (types.MediaType, error) { return x.desc.MediaType, nil }

// Digest implements v1.ImageIndex.
func (x *index) Digest() (v1.Hash, error) { return x.desc.Digest, nil }

// Size implements v1.ImageIndex.
func (x *index) Size() (int64, error) { return int64(len(x.raw)), nil }

// IndexManifest implements v1.ImageIndex.
func (x *index) IndexManifest() (*v1.IndexManifest, error) { return x.im.DeepCopy(), nil }

// RawManifest implements v1.ImageIndex.
func (x *index) RawManifest() ([]byte, error) { return x.raw, nil }

// Descriptor returns the index's descriptor. See partial.Descriptor.
func (x *index) Descriptor() (*v1.Descriptor, error) {
	d := x.desc
	return &d, nil
}

func (x *index) child(h v1.Hash) (v1.Descriptor, error) {
	for _, c := range x.im.Manifests {
		if c.Digest == h {
			return c, nil
		}
	}
	return v1.Descriptor{}, fmt.Errorf("%s: index %s has no manifest %s", x.ref, x.desc.Digest, h)
}

// Image implements v1.ImageIndex.
func (x *index) Image(h v1.Hash) (v1.Image, error) {
	c, err := x.child(h)
	if err != nil {
		return nil, err
	}
	return x.p.childImage(x.p.o.ctx, x.ref, c)
}

// ImageIndex implements v1.ImageIndex, for nested indexes.
func (x *index) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	c, err := x.child(h)
	if err != nil {
		return nil, err
	}
	raw, err := x.p.childManifest(x.p.o.ctx, x.ref, c)
	if err != nil {
		return nil, err
	}
	return newIndex(x.p, x.ref, c, raw)
}
