package layoutfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"

	"github.com/ocibuild/layercache/internal/fsutil"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// CorruptIndexFile is where an index.json that was not a valid OCI image
// index is kept, for a person to look at, when it is rebuilt. Only the last
// one is kept.
const CorruptIndexFile = IndexFile + ".corrupt"

// Media types of the Docker manifests that a rebuild recognises beside the
// OCI ones.
const (
	dockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// RepairIndex rebuilds index.json if it is not a valid OCI image index
// (garbage, truncated, larger than 16 MiB, or a symlink), under the index
// lock: the bad file is kept as index.json.corrupt, and the new index lists
// every image the blobs hold (each stored manifest or index that no stored
// index lists), without ref names, which only the lost file knew. It
// reports whether it rebuilt, and how many images the new index lists. A
// valid index.json is left alone.
func (p Path) RepairIndex(ctx context.Context) (rebuilt bool, images int, err error) {
	if _, err := p.ReadIndex(); !errors.Is(err, ErrBadIndex) {
		return false, 0, err
	}
	l, err := p.LockIndex(ctx)
	if err != nil {
		return false, 0, err
	}
	defer l.Unlock()
	// Another process may have repaired it while we waited.
	if _, err := p.ReadIndex(); !errors.Is(err, ErrBadIndex) {
		return false, 0, err
	}
	idx, err := p.rebuildIndex(ctx)
	if err != nil {
		return false, 0, err
	}
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return false, 0, err
	}
	if err := p.writeFileAtomic(IndexFile, append(b, '\n')); err != nil {
		return false, 0, err
	}
	return true, len(idx.Manifests), nil
}

// rebuildIndex sets a bad index.json aside and returns an index of the
// images the blobs hold. The caller holds the index lock.
func (p Path) rebuildIndex(ctx context.Context) (ocispec.Index, error) {
	bad, corrupt := p.Join(IndexFile), p.Join(CorruptIndexFile)
	// Keep the last bad file only; whatever it is (a file, a symlink, a
	// directory), it is moved or removed, never followed. os.Remove, not
	// RemoveAll: a directory is removed only if it is empty, since what
	// is in one was not written by layercache.
	if err := os.Remove(corrupt); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return ocispec.Index{}, fmt.Errorf("setting %s aside: %w", bad, err)
	}
	if err := os.Rename(bad, corrupt); err != nil && !errors.Is(err, fs.ErrNotExist) {
		if err := os.Remove(bad); err != nil {
			return ocispec.Index{}, fmt.Errorf("setting %s aside: %w", bad, err)
		}
	}
	idx := emptyIndex()
	roots, err := p.storedImages(ctx)
	if err != nil {
		return ocispec.Index{}, err
	}
	idx.Manifests = roots
	return idx, nil
}

// storedImages returns a descriptor of every stored manifest or index that
// no stored index lists, sorted by digest. Blobs whose bytes do not hash to
// their name are skipped: the store removes them when they are read.
func (p Path) storedImages(ctx context.Context) ([]ocispec.Descriptor, error) {
	found := map[digest.Digest]ocispec.Descriptor{}
	listed := map[digest.Digest]bool{}
	if CheckDir(p.Join(BlobsDir)) != nil {
		return []ocispec.Descriptor{}, nil
	}
	for _, alg := range Algorithms {
		dir := p.AlgorithmDir(alg)
		if CheckDir(dir) != nil {
			continue
		}
		entries, err := fsutil.ReadDir(dir, true)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("rebuilding %s: %w", p.Join(IndexFile), err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			d, err := ParseBlobName(alg, e.Name())
			if err != nil || !e.Type().IsRegular() {
				continue
			}
			desc, children, ok := readManifest(dir+string(os.PathSeparator)+e.Name(), d)
			if !ok {
				continue
			}
			found[d] = desc
			for _, c := range children {
				listed[c] = true
			}
		}
	}
	out := []ocispec.Descriptor{}
	for d, desc := range found {
		if !listed[d] {
			out = append(out, desc)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}

// readManifest reads the blob d at path and, if it is an image manifest or
// index whose bytes hash to d, returns its descriptor and, for an index,
// the digests it lists.
func readManifest(path string, d digest.Digest) (ocispec.Descriptor, []digest.Digest, bool) {
	b, err := fsutil.ReadSmallFile(path, MaxManifestSize)
	if err != nil || len(b) == 0 || len(b) > MaxManifestSize || b[0] != '{' || d.Algorithm().FromBytes(b) != d {
		return ocispec.Descriptor{}, nil, false
	}
	var m struct {
		SchemaVersion int                  `json:"schemaVersion"`
		Manifests     []ocispec.Descriptor `json:"manifests"`
	}
	if json.Unmarshal(b, &m) != nil || m.SchemaVersion != 2 {
		return ocispec.Descriptor{}, nil, false
	}
	mt := ManifestMediaType(b)
	switch mt {
	case ocispec.MediaTypeImageIndex, dockerManifestList:
		var children []digest.Digest
		for _, c := range m.Manifests {
			children = append(children, c.Digest)
		}
		return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}, children, true
	case ocispec.MediaTypeImageManifest, dockerManifest:
		return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}, nil, true
	}
	return ocispec.Descriptor{}, nil, false
}
