// Package kocache plugs layercache into ko: GetBase returns a
// build.GetBase for ko's build.WithBaseImages that pulls every base image
// through a layercache store. The base's manifests, configs and layers
// come from the cache first, verified against their digests, and from the
// registry only on a miss; a base tag the cache has recorded resolves
// without the registry when it cannot be reached (or never asks, with
// remotecache.WithResolve(remotecache.ResolveOffline)).
//
// A ko-based tool adds a few lines where it builds:
//
//	s, err := store.Open(dir) // dir from cachedir.Dir(), or your own
//	defer s.Close()           // writes the pull counters (layercache stats)
//	getBase := kocache.GetBase(s, kocache.Bases{Default: "cgr.dev/chainguard/static:latest"},
//		remotecache.WithKeychain(authn.DefaultKeychain))
//	b, err := build.NewGo(ctx, ".", build.WithBaseImages(getBase), build.WithPlatforms("linux/amd64", "linux/arm64"))
//
// A base that is an image index is returned as an index, so ko builds one
// image per platform it asks for and publishes an index of them. The
// layers of the base are remote.MountableLayer values, so ko's publisher
// mounts them when it pushes to another repository of the base's registry,
// and does not read them at all.
//
// The package is a module of its own, github.com/ocibuild/layercache/contrib/kocache,
// so that only tools that use ko get ko's dependencies.
package kocache

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/ko/pkg/build"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// localDomain is the registry name with which ko means the local Docker
// daemon (ko's publish.LocalDomain), which a registry cache cannot serve.
const localDomain = "ko.local"

// Bases says which base image each import path is built on, as ko's
// defaultBaseImage and baseImageOverrides settings do.
type Bases struct {
	// Default is the base of every import path that Overrides does not
	// name: ko's defaultBaseImage (KO_DEFAULTBASEIMAGE).
	Default string
	// Overrides maps import paths, without ko's "ko://" prefix, to their
	// base: ko's baseImageOverrides. A key equal to the import path
	// wins; otherwise keys are compared without regard to case, as in ko,
	// whose configuration loader lowercases them.
	Overrides map[string]string
	// NameOptions parse every base reference, as ko parses them:
	// name.Insecure for ko's --insecure-registry, for instance.
	NameOptions []name.Option
}

// For returns the base of an import path (with or without "ko://"), or ""
// if there is none.
func (b Bases) For(importpath string) string {
	ip := strings.TrimPrefix(importpath, build.StrictScheme)
	if base, ok := b.Overrides[ip]; ok && base != "" {
		return base
	}
	for k, base := range b.Overrides {
		if base != "" && strings.EqualFold(k, ip) {
			return base
		}
	}
	return b.Default
}

// GetBase returns the build.GetBase of a ko build whose base images come
// through the store s: pass it to build.WithBaseImages. For each import
// path it parses the base that bases names with bases.NameOptions and
// pulls it with remotecache, with opts (a keychain, a transport, a resolve
// policy, a logger).
//
// The context of each pull, including the lazy reads of configs and
// layers that follow, is the one ko passes to the function (the build's),
// whatever WithContext opts hold. WithPlatform in opts has no effect: ko
// picks the platforms (build.WithPlatforms) from the index itself.
//
// A tag that names an index is asked for once per build (a HEAD once the
// cache has recorded it, nothing with ResolveOffline). A tag that names an
// image is too, once recorded; before that, its first pull fetches its
// manifest twice, since the first request is for an index.
func GetBase(s *store.Store, bases Bases, opts ...remotecache.Option) build.GetBase {
	return func(ctx context.Context, importpath string) (name.Reference, build.Result, error) {
		base := bases.For(importpath)
		if base == "" {
			return nil, nil, fmt.Errorf("no base image for %s: set kocache.Bases.Default", importpath)
		}
		ref, err := name.ParseReference(base, bases.NameOptions...)
		if err != nil {
			return nil, nil, fmt.Errorf("parsing base image (%q): %w", base, err)
		}
		if ref.Context().RegistryStr() == localDomain {
			return nil, nil, fmt.Errorf("base image %s: %s names the local Docker daemon, which kocache does not read", ref, localDomain)
		}
		res, err := Pull(ctx, ref, s, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("pulling %s: %w", ref, err)
		}
		return ref, res, nil
	}
}

// Pull returns what ref names, through the store s: a v1.ImageIndex if it
// is an index, else a v1.Image. GetBase uses it; see there for opts and
// ctx.
//
// remotecache has Image and Index but no call that returns either, so
// Pull asks for the kind the cache recorded for the tag (an index if it
// recorded none) and, if ref turns out to be the other kind, for that.
func Pull(ctx context.Context, ref name.Reference, s *store.Store, opts ...remotecache.Option) (build.Result, error) {
	// Ours last, so that they win. Any platform satisfies the empty one:
	// asked for it, Image returns the first child of an index that names
	// its platform, instead of failing when an index has no linux/amd64.
	opts = append(opts[:len(opts):len(opts)], remotecache.WithContext(ctx), remotecache.WithPlatform(v1.Platform{}))

	if recordedImage(ctx, ref, s) {
		img, fromIndex, err := image(ref, s, opts)
		if err != nil || !fromIndex {
			return img, err
		}
		// The tag moved from an image to an index.
		return remotecache.Index(ref, s, opts...)
	}
	idx, ierr := remotecache.Index(ref, s, opts...)
	if ierr == nil {
		return idx, nil
	}
	if errors.Is(ierr, remotecache.ErrOffline) || ctx.Err() != nil {
		// Image would fail the same way.
		return nil, ierr
	}
	img, fromIndex, err := image(ref, s, opts)
	switch {
	case err != nil:
		// ref names an image (ierr said it is no index) and this is why
		// it cannot be had, or ref is neither and err says so as well as
		// ierr.
		return nil, err
	case fromIndex:
		// ref names an index after all: ierr is why it could not be had.
		return nil, ierr
	}
	return img, nil
}

// recordedImage reports whether ref is a tag that the cache recorded as
// naming an image.
func recordedImage(ctx context.Context, ref name.Reference, s *store.Store) bool {
	if _, ok := ref.(name.Tag); !ok {
		return false
	}
	desc, err := s.Resolve(ctx, ref.Name())
	return err == nil && !types.MediaType(desc.MediaType).IsIndex()
}

// image pulls ref with remotecache.Image and says whether what ref names
// is an index (of which img is then a child) rather than an image. An
// image that remotecache took from an index has the platform of its
// descriptor there; with WithPlatform given, it picks no child without one.
func image(ref name.Reference, s *store.Store, opts []remotecache.Option) (img v1.Image, fromIndex bool, err error) {
	img, err = remotecache.Image(ref, s, opts...)
	if err != nil {
		return nil, false, err
	}
	desc, err := partial.Descriptor(img)
	if err != nil {
		return nil, false, err
	}
	return img, desc.Platform != nil, nil
}
