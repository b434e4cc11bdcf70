package layout

import (
	"encoding/json"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MaxManifestSize bounds every manifest, index and config that layercache
// reads whole into memory: a rebuild of index.json, the store's whole-blob
// reads (store.MaxBlobInMemory) and every pull's. Registries refuse
// manifests over 4 MiB (distribution's limit); twice that leaves room.
const MaxManifestSize = 8 << 20

// ManifestMediaType returns the media type of the manifest or index raw:
// its own mediaType field, or, when the field is absent (it is optional in
// OCI manifests), what its shape says: an index lists manifests and has
// no config, an image manifest the other way round. It returns "" for
// anything else, which no pull or rebuild takes as a manifest. It is the
// one sniffer of manifests in layercache.
func ManifestMediaType(raw []byte) string {
	var m struct {
		MediaType string          `json:"mediaType"`
		Config    json.RawMessage `json:"config"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(raw, &m) != nil {
		return ""
	}
	switch {
	case m.MediaType != "":
		return m.MediaType
	case m.Manifests != nil && m.Config == nil:
		return ocispec.MediaTypeImageIndex
	case m.Config != nil && m.Manifests == nil:
		return ocispec.MediaTypeImageManifest
	}
	return ""
}
