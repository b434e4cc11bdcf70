package remotecache

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/layout"
)

// toDigest converts ggcr's hash type to the store's digest type. It is the
// one place where the two meet; the digest is validated, so a malformed
// hash from a registry never becomes a path.
func toDigest(h v1.Hash) (digest.Digest, error) {
	d := digest.Digest(h.String())
	if err := layout.Validate(d); err != nil {
		return "", err
	}
	return d, nil
}

// toHash converts a validated digest to ggcr's hash type.
func toHash(d digest.Digest) v1.Hash {
	return v1.Hash{Algorithm: string(d.Algorithm()), Hex: d.Encoded()}
}

// sniffMediaType returns the media type of a manifest or index: see
// layout.ManifestMediaType, the one sniffer.
func sniffMediaType(raw []byte) types.MediaType {
	return types.MediaType(layout.ManifestMediaType(raw))
}
