package layoutfs

import (
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/layout"
)

// The format, from package layout, under the names this package's code and
// tests use. The values are layout's own, so errors.Is matches either.
const (
	LayoutFile      = layout.LayoutFile
	IndexFile       = layout.IndexFile
	BlobsDir        = layout.BlobsDir
	IngestDir       = layout.IngestDir
	MaxManifestSize = layout.MaxManifestSize
)

var (
	Algorithms       = layout.Algorithms
	ErrInvalidDigest = layout.ErrInvalidDigest
	ErrNotLayout     = layout.ErrNotLayout
	ErrBadIndex      = layout.ErrBadIndex
)

// Validate is layout.Validate.
func Validate(d digest.Digest) error { return layout.Validate(d) }

// ParseBlobName is layout.ParseBlobName.
func ParseBlobName(alg digest.Algorithm, name string) (digest.Digest, error) {
	return layout.ParseBlobName(alg, name)
}

// ManifestMediaType is layout.ManifestMediaType.
func ManifestMediaType(raw []byte) string { return layout.ManifestMediaType(raw) }

// Format returns p as the format sees it.
func (p Path) Format() layout.Path { return layout.Path(p) }

// String returns the root directory.
func (p Path) String() string { return string(p) }

// Join is layout.Path.Join.
func (p Path) Join(elem ...string) string { return p.Format().Join(elem...) }

// BlobPath is layout.Path.BlobPath.
func (p Path) BlobPath(d digest.Digest) (string, error) { return p.Format().BlobPath(d) }

// AlgorithmDir is layout.Path.AlgorithmDir.
func (p Path) AlgorithmDir(alg digest.Algorithm) string { return p.Format().AlgorithmDir(alg) }

// ReadIndex is layout.Path.ReadIndex.
func (p Path) ReadIndex() (ocispec.Index, error) { return p.Format().ReadIndex() }

func (p Path) isLayout() (bool, error) { return p.Format().IsLayout() }

// emptyIndex is the index of a layout that holds no refs, as layout's
// ReadIndex gives for a missing index.json.
func emptyIndex() ocispec.Index {
	return ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{},
	}
}
