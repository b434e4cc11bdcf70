package main

import (
	"bytes"
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// catalog is what the cache knows about its blobs from the manifests its
// refs point at: media types, which ref uses which blob, image sizes.
type catalog struct {
	mediaTypes map[digest.Digest]string
	images     []imageEntry
}

// imageEntry describes one ref of index.json.
type imageEntry struct {
	Ref       string   `json:"ref"`
	Digest    string   `json:"digest"`
	MediaType string   `json:"mediaType"`
	Platforms []string `json:"platforms"`
	// Attestations counts the attestation manifests of the index that
	// the cache holds (warm --attestations); they are not platforms.
	Attestations int `json:"attestations"`
	// Size is the bytes of every blob of the ref that the cache holds:
	// manifests, configs and layers.
	Size     int64  `json:"size"`
	Complete bool   `json:"complete"` // every blob of the cached platforms is present
	LastUsed string `json:"lastUsed"` // RFC 3339, of the ref's manifest or index
}

// loadCatalog reads the refs and the manifests they reach. Blobs missing
// from the cache are skipped and make their image incomplete.
func loadCatalog(ctx context.Context, s *store.Store) (*catalog, error) {
	c := &catalog{mediaTypes: map[digest.Digest]string{}}
	refs, err := s.Refs(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range refs {
		e := imageEntry{Ref: r.Annotations[ocispec.AnnotationRefName], Digest: r.Digest.String(), MediaType: r.MediaType, Complete: true}
		if info, err := s.Stat(ctx, r.Digest); err == nil {
			e.LastUsed = info.LastUsed.UTC().Format("2006-01-02T15:04:05Z")
		}
		c.walk(ctx, s, r, &e, map[digest.Digest]bool{})
		c.images = append(c.images, e)
	}
	return c, nil
}

// walk adds desc and what it references to the catalog and to e.
func (c *catalog) walk(ctx context.Context, s *store.Store, desc ocispec.Descriptor, e *imageEntry, seen map[digest.Digest]bool) {
	if seen[desc.Digest] {
		return
	}
	seen[desc.Digest] = true
	c.mediaTypes[desc.Digest] = desc.MediaType
	info, err := s.Stat(ctx, desc.Digest)
	if err != nil {
		if desc.Platform == nil || desc.MediaType == "" {
			e.Complete = false
		}
		return
	}
	e.Size += info.Size
	mt := v1MediaType(desc.MediaType)
	if !mt.IsIndex() && !mt.IsImage() {
		return
	}
	raw, err := s.Get(ctx, desc.Digest, store.Inspect)
	if err != nil {
		e.Complete = false
		return
	}
	if mt.IsIndex() {
		c.walkIndex(ctx, s, raw, e, seen)
		return
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return
	}
	c.walkConfig(ctx, s, desc, m.Config, e)
	c.walkLayers(ctx, s, m.Layers, e, seen)
}

// walkIndex walks the children of an index that the cache holds, and
// counts them as platforms or attestations.
func (c *catalog) walkIndex(ctx context.Context, s *store.Store, raw []byte, e *imageEntry, seen map[digest.Digest]bool) {
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return
	}
	for _, child := range im.Manifests {
		od := ocispec.Descriptor{MediaType: string(child.MediaType), Digest: digest.Digest(child.Digest.String()), Size: child.Size, Annotations: child.Annotations}
		if _, err := s.Stat(ctx, od.Digest); err != nil {
			continue // a platform that was not warmed
		}
		switch {
		case remotecache.IsAttestation(child):
			e.Attestations++
		case child.Platform != nil:
			e.Platforms = append(e.Platforms, child.Platform.String())
		}
		c.walk(ctx, s, od, e, seen)
	}
}

// walkConfig adds the config of the image desc to e, and its platform
// when the index did not name one. A blob of another size than its
// descriptor's is not the blob (a file planted or grown at its name): the
// image is not complete.
func (c *catalog) walkConfig(ctx context.Context, s *store.Store, desc ocispec.Descriptor, config v1.Descriptor, e *imageEntry) {
	d := digest.Digest(config.Digest.String())
	c.mediaTypes[d] = string(config.MediaType)
	info, err := s.Stat(ctx, d)
	if err != nil {
		e.Complete = false
		return
	}
	e.Size += info.Size
	if info.Size != config.Size {
		e.Complete = false
	}
	// An attestation's config says unknown/unknown: not a platform.
	if (len(e.Platforms) > 0 && desc.Platform != nil) || desc.Annotations[remotecache.AnnotationReferenceType] == remotecache.ReferenceTypeAttestation {
		return
	}
	raw, err := s.Get(ctx, d, store.Inspect)
	if err != nil {
		return
	}
	if cf, err := v1.ParseConfigFile(bytes.NewReader(raw)); err == nil && cf.OS != "" && !contains(e.Platforms, cf.Platform().String()) {
		e.Platforms = append(e.Platforms, cf.Platform().String())
	}
}

// walkLayers adds the layers the cache holds to e, each once.
func (c *catalog) walkLayers(ctx context.Context, s *store.Store, layers []v1.Descriptor, e *imageEntry, seen map[digest.Digest]bool) {
	for _, l := range layers {
		d := digest.Digest(l.Digest.String())
		c.mediaTypes[d] = string(l.MediaType)
		if seen[d] {
			continue
		}
		seen[d] = true
		info, err := s.Stat(ctx, d)
		if err != nil || info.Size != l.Size {
			e.Complete = false
		}
		if err == nil {
			e.Size += info.Size
		}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
