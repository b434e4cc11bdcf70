package main

import (
	"bytes"
	"context"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// pulled lists the digests of an image that a pull saw.
type pulled struct {
	manifest digest.Digest
	config   digest.Digest
	layers   []digest.Digest
	sizes    map[digest.Digest]int64
}

// pullImage reads img through remotecache.Image the way a builder does:
// manifest, config, every layer's compressed stream to its end, and the
// first layer's uncompressed stream. It hashes everything itself. Bytes
// that do not match what the image names, returned without an error, are
// violations; an error is returned as it is.
func pullImage(ctx context.Context, s *store.Store, img imageSpec, opts []remotecache.Option) (pulled, []string, error) {
	var bad []string
	var p pulled
	ri, err := remotecache.Image(img.ref, s, opts...)
	if err != nil {
		return p, nil, err
	}
	raw, err := ri.RawManifest()
	if err != nil {
		return p, nil, err
	}
	if got := digest.FromBytes(raw); got != img.digest {
		bad = append(bad, fmt.Sprintf("pull %s: served a manifest hashing to %s, want %s", img.ref, got, img.digest))
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return p, bad, err
	}
	p.manifest = img.digest
	p.config = digest.Digest(m.Config.Digest.String())
	p.sizes = map[digest.Digest]int64{p.manifest: int64(len(raw)), p.config: m.Config.Size}
	cfg, err := ri.RawConfigFile()
	if err != nil {
		return p, bad, err
	}
	if got := digest.FromBytes(cfg); got != p.config {
		bad = append(bad, fmt.Sprintf("pull %s: served a config hashing to %s, want %s", img.ref, got, p.config))
	}
	layers, err := ri.Layers()
	if err != nil {
		return p, bad, err
	}
	for i, l := range layers {
		want := digest.Digest(m.Layers[i].Digest.String())
		p.layers = append(p.layers, want)
		p.sizes[want] = m.Layers[i].Size
		rc, err := l.Compressed()
		if err != nil {
			return p, bad, err
		}
		got, n, err := hashAll(rc)
		rc.Close()
		if err != nil {
			return p, bad, err
		}
		if got != want || n != m.Layers[i].Size {
			bad = append(bad, fmt.Sprintf("pull %s: layer %d served %d bytes hashing to %s, want %d bytes of %s", img.ref, i, n, got, m.Layers[i].Size, want))
		}
		if i == 0 {
			rc, err := l.Uncompressed()
			if err != nil {
				return p, bad, err
			}
			got, _, err := hashAll(rc)
			rc.Close()
			if err != nil {
				return p, bad, err
			}
			cf, err := v1.ParseConfigFile(bytes.NewReader(cfg))
			if err != nil {
				return p, bad, err
			}
			if want := cf.RootFS.DiffIDs[0].String(); string(got) != want {
				bad = append(bad, fmt.Sprintf("pull %s: layer 0 uncompressed to bytes hashing to %s, want the diff ID %s", img.ref, got, want))
			}
		}
	}
	return p, bad, nil
}
