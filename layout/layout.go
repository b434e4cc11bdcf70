// Package layout is the on-disk format of a layercache directory, as a
// reader of the cache needs it: an OCI image layout (oci-layout,
// index.json, blobs/<alg>/<encoded>) plus an ingest/ folder for temporary
// files and lock files, which readers ignore.
//
// The directory is a valid OCI image layout as it stands, so crane, skopeo
// (oci:DIR:REF), oras and go-containerregistry's layout package read it
// without conversion:
//
//	<dir>/
//	  oci-layout         {"imageLayoutVersion":"1.0.0"}
//	  index.json         refs of warmed images
//	  blobs/sha256/<hex> one file per blob, named by its digest
//	  blobs/sha512/<hex>
//	  ingest/            temporary files and lock files; never read as blobs
//
// This package maps digests to paths (validating every digest before a path
// is built), recognises a layout, reads index.json and tells a manifest's
// media type. It writes nothing: pkg/store writes a cache, through the
// plumbing in internal/layoutfs (creation, temporary files, locks, sweeps
// and the locked rewrite of index.json).
package layout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/ocibuild/layercache/internal/fsutil"
)

// Names of the files and folders of a layout, relative to its root.
const (
	LayoutFile = "oci-layout"
	IndexFile  = "index.json"
	BlobsDir   = "blobs"
	IngestDir  = "ingest"
)

// ErrNotLayout is returned by IsLayout for an oci-layout file that is not
// one, and by pkg/store's Open for a directory that holds files but is not
// an OCI image layout, so that a mistaken cache directory (say $HOME) is
// never filled with blobs.
var ErrNotLayout = errors.New("not an OCI image layout")

// Path is the absolute root of a layout on disk.
type Path string

// String returns the root directory.
func (p Path) String() string { return string(p) }

// Join returns the path of elem below the root.
func (p Path) Join(elem ...string) string {
	return filepath.Join(append([]string{string(p)}, elem...)...)
}

// IsLayout reports whether p holds an oci-layout file, which makes it an
// OCI image layout. A file there that is not valid JSON with an
// imageLayoutVersion, or that is not a regular file (a symlink, a FIFO),
// gives an error wrapping ErrNotLayout.
func (p Path) IsLayout() (bool, error) {
	b, err := fsutil.ReadSmallFile(p.Join(LayoutFile), 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if errors.Is(err, fsutil.ErrNotRegular) {
		return false, fmt.Errorf("cache dir %s: %w: %v", p, ErrNotLayout, err)
	}
	if err != nil {
		return false, fmt.Errorf("cache dir %s: %w", p, err)
	}
	var v struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(b, &v); err != nil || v.Version == "" {
		return false, fmt.Errorf("cache dir %s: %w: %s is not valid JSON with imageLayoutVersion", p, ErrNotLayout, LayoutFile)
	}
	return true, nil
}
