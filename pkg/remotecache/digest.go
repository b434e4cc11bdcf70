package remotecache

import (
	"encoding/json"

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

// sniffMediaType returns the media type of a manifest or index from its
// own mediaType field, or from its shape when the field is absent (it is
// optional in OCI manifests).
func sniffMediaType(raw []byte) types.MediaType {
	var m struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return ""
	}
	if m.MediaType != "" {
		return m.MediaType
	}
	if m.Manifests != nil {
		return types.OCIImageIndex
	}
	return types.OCIManifestSchema1
}
