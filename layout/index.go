package layout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"

	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/fsutil"
)

// ErrBadIndex is returned by ReadIndex when index.json exists but is not a
// valid OCI image index (garbage, truncated, or larger than maxIndexSize).
var ErrBadIndex = errors.New("index.json is not a valid OCI image index")

// maxIndexSize bounds what ReadIndex loads. An index of warmed refs is a
// few hundred bytes per ref; 16 MiB is tens of thousands of refs, and a
// larger file is garbage, not something to parse into memory.
const maxIndexSize = 16 << 20

// emptyIndex is the index of a layout that holds no refs.
func emptyIndex() ocispec.Index {
	return ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{},
	}
}

// ReadIndex reads index.json. It takes no lock: index.json is only ever
// replaced by rename, so a reader sees a whole old or a whole new file. A
// missing index.json reads as an empty index. A symlink, a directory or a
// FIFO at its name is ErrBadIndex: what a symlink points at is never read.
func (p Path) ReadIndex() (ocispec.Index, error) {
	b, err := fsutil.ReadSmallFile(p.Join(IndexFile), maxIndexSize)
	if errors.Is(err, fs.ErrNotExist) {
		return emptyIndex(), nil
	}
	if errors.Is(err, fsutil.ErrNotRegular) {
		return ocispec.Index{}, fmt.Errorf("%w: %v", ErrBadIndex, err)
	}
	if err != nil {
		return ocispec.Index{}, fmt.Errorf("reading %s: %w", p.Join(IndexFile), err)
	}
	if len(b) > maxIndexSize {
		return ocispec.Index{}, fmt.Errorf("%s: %w: larger than %d bytes", p.Join(IndexFile), ErrBadIndex, maxIndexSize)
	}
	var idx ocispec.Index
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&idx); err != nil {
		return ocispec.Index{}, fmt.Errorf("%s: %w: %v", p.Join(IndexFile), ErrBadIndex, err)
	}
	if idx.SchemaVersion != 2 {
		return ocispec.Index{}, fmt.Errorf("%s: %w: schemaVersion %d", p.Join(IndexFile), ErrBadIndex, idx.SchemaVersion)
	}
	for i, m := range idx.Manifests {
		if err := Validate(m.Digest); err != nil {
			return ocispec.Index{}, fmt.Errorf("%s: %w: manifests[%d]: %v", p.Join(IndexFile), ErrBadIndex, i, err)
		}
	}
	if idx.Manifests == nil {
		idx.Manifests = []ocispec.Descriptor{}
	}
	return idx, nil
}
