package store

import (
	"context"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/internal/layoutfs"
)

// refAnnotation is the annotation of index.json entries that holds the
// reference an image was warmed under, as the OCI image layout defines it.
// crane, skopeo (oci:DIR:REF) and ggcr's layout package read it.
const refAnnotation = ocispec.AnnotationRefName

// Refs returns the entries of index.json that carry a ref name, in file
// order. It takes no lock.
func (s *Store) Refs(ctx context.Context) (refs []ocispec.Descriptor, err error) {
	defer diskerr.MarkAt(&err)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	idx, err := s.path.ReadIndex()
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	for _, m := range idx.Manifests {
		if m.Annotations[refAnnotation] != "" {
			out = append(out, m)
		}
	}
	return out, nil
}

// Resolve returns the descriptor recorded for the ref name, or an error
// wrapping ErrNotFound. It does not check that the blob is still stored.
func (s *Store) Resolve(ctx context.Context, name string) (desc ocispec.Descriptor, err error) {
	defer diskerr.MarkAt(&err)
	refs, err := s.Refs(ctx)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, m := range refs {
		if m.Annotations[refAnnotation] == name {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("ref %s: %w", name, ErrNotFound)
}

// Tag records desc in index.json under the ref name, replacing any entry
// with the same name. Concurrent Tag calls from many processes each keep
// their entry: the rewrite happens under the index lock. A descriptor whose
// digest does not validate gives ErrInvalidDigest and leaves index.json as
// it was.
func (s *Store) Tag(ctx context.Context, name string, desc ocispec.Descriptor) (err error) {
	defer diskerr.MarkAt(&err)
	if name == "" {
		return fmt.Errorf("tag %s: empty ref name", desc.Digest)
	}
	// ReadIndex refuses an index holding an invalid digest (ErrBadIndex),
	// and the next UpdateIndex would replace it, losing every other ref.
	if err := layoutfs.Validate(desc.Digest); err != nil {
		return fmt.Errorf("tag %s: %w", name, err)
	}
	ann := map[string]string{}
	for k, v := range desc.Annotations {
		ann[k] = v
	}
	ann[refAnnotation] = name
	desc.Annotations = ann
	return s.path.UpdateIndex(ctx, func(idx *ocispec.Index) error {
		kept := idx.Manifests[:0]
		for _, m := range idx.Manifests {
			if m.Annotations[refAnnotation] != name {
				kept = append(kept, m)
			}
		}
		idx.Manifests = append(kept, desc)
		return nil
	})
}

// Untag removes the entries of the given ref names from index.json. Names
// that are not there are ignored.
func (s *Store) Untag(ctx context.Context, names ...string) (err error) {
	defer diskerr.MarkAt(&err)
	drop := map[string]bool{}
	for _, n := range names {
		drop[n] = true
	}
	return s.path.UpdateIndex(ctx, func(idx *ocispec.Index) error {
		kept := idx.Manifests[:0]
		for _, m := range idx.Manifests {
			if !drop[m.Annotations[refAnnotation]] {
				kept = append(kept, m)
			}
		}
		idx.Manifests = kept
		return nil
	})
}
