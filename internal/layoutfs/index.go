package layoutfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// emptyIndexJSON is the index.json that Create writes into a new layout.
func emptyIndexJSON() ([]byte, error) {
	return json.Marshal(emptyIndex())
}

// UpdateIndex rewrites index.json under the index lock: it reads the
// current index, lets fn change it, and writes the result durably (temp
// file, fsync, rename, fsync of the directory). Two processes updating at
// once are serialised, so neither loses the other's change. If fn returns
// an error, index.json is left as it was.
//
// An index.json that does not parse (ErrBadIndex) is set aside as
// index.json.corrupt and rebuilt from the blobs (see RepairIndex): fn
// starts from the rebuilt index, and the returned error is nil.
func (p Path) UpdateIndex(ctx context.Context, fn func(*ocispec.Index) error) error {
	l, err := p.LockIndex(ctx)
	if err != nil {
		return err
	}
	defer l.Unlock()
	idx, err := p.ReadIndex()
	if errors.Is(err, ErrBadIndex) {
		idx, err = p.rebuildIndex(ctx)
	}
	if err != nil {
		return err
	}
	if err := fn(&idx); err != nil {
		return err
	}
	if idx.Manifests == nil {
		idx.Manifests = []ocispec.Descriptor{}
	}
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", p.Join(IndexFile), err)
	}
	return p.writeFileAtomic(IndexFile, append(b, '\n'))
}
