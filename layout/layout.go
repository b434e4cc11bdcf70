// Package layout owns the on-disk format of a layercache directory: an OCI
// image layout (oci-layout, index.json, blobs/<alg>/<encoded>) plus an
// ingest/ folder for temporary files and lock files.
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
// is built), creates and recognises the layout, hands out temporary files and
// lock files in ingest/, and rewrites index.json atomically under a lock. It
// knows nothing about verification of blob contents: that is pkg/store's job.
package layout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Names of the files and folders of a layout, relative to its root.
const (
	LayoutFile = "oci-layout"
	IndexFile  = "index.json"
	BlobsDir   = "blobs"
	IngestDir  = "ingest"
)

// layoutVersion is the only imageLayoutVersion the OCI image spec defines.
const layoutVersion = "1.0.0"

// ErrNotLayout is returned by Create when the directory holds files but is
// not an OCI image layout, so that a mistaken cache directory (say $HOME) is
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

// Create makes dir a layout, or reuses it if it already is one. A missing or
// empty directory is initialised; a directory holding an oci-layout file is
// reused (missing blobs/ and ingest/ folders are created where the directory
// is writable); any other non-empty directory is refused with ErrNotLayout.
// A path that exists but is not a directory is refused too.
//
// Create is safe to call from many processes at once: the layout files are
// published by rename, so a concurrent caller sees either no oci-layout file
// or a whole one.
func Create(dir string) (Path, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("cache dir %s: %w", dir, err)
	}
	p := Path(abs)
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return "", fmt.Errorf("cache dir %s: %w", abs, err)
		}
	case err != nil:
		return "", fmt.Errorf("cache dir %s: %w", abs, err)
	case !fi.IsDir():
		return "", fmt.Errorf("cache dir %s: %w: it is a file, not a directory", abs, ErrNotLayout)
	}

	isLayout, err := p.isLayout()
	if err != nil {
		return "", err
	}
	if !isLayout {
		entries, err := os.ReadDir(abs)
		if err != nil {
			return "", fmt.Errorf("cache dir %s: %w", abs, err)
		}
		if !onlyOurs(entries) {
			return "", fmt.Errorf("cache dir %s: %w: it holds other files (%s, ...) and no %s; refusing to use it",
				abs, ErrNotLayout, entries[0].Name(), LayoutFile)
		}
		if err := p.init(); err != nil {
			return "", err
		}
	}
	// Best effort: a read-only layout is still a usable one for reads.
	for _, d := range []string{p.Join(BlobsDir), p.Join(IngestDir)} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) && !IsReadOnly(err) {
			return "", fmt.Errorf("cache dir %s: %w", abs, err)
		}
	}
	return p, nil
}

// onlyOurs reports whether a directory without oci-layout holds nothing but
// what an interrupted Create of ours leaves behind (ingest/, blobs/,
// index.json), so that Create can finish the job.
func onlyOurs(entries []fs.DirEntry) bool {
	for _, e := range entries {
		switch e.Name() {
		case IngestDir, BlobsDir, IndexFile, StatsFile:
		default:
			return false
		}
	}
	return true
}

func (p Path) isLayout() (bool, error) {
	b, err := os.ReadFile(p.Join(LayoutFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
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

// init writes the layout files. index.json comes first and oci-layout last,
// so a directory holding oci-layout is always a complete layout.
func (p Path) init() error {
	for _, d := range []string{BlobsDir, IngestDir} {
		if err := os.MkdirAll(p.Join(d), 0o755); err != nil {
			return fmt.Errorf("cache dir %s: %w", p, err)
		}
	}
	if _, err := os.Stat(p.Join(IndexFile)); errors.Is(err, fs.ErrNotExist) {
		b, err := json.Marshal(emptyIndex())
		if err != nil {
			return err
		}
		if err := p.writeFileAtomic(IndexFile, b); err != nil {
			return err
		}
	}
	b := []byte(`{"imageLayoutVersion":"` + layoutVersion + `"}`)
	return p.writeFileAtomic(LayoutFile, b)
}

// writeFileAtomic writes name below the root durably: a temp file in
// ingest/, fsync, rename, fsync of the root directory. Readers see the old
// file or the new one, never a torn one, even after a power loss.
func (p Path) writeFileAtomic(name string, data []byte) error {
	f, err := p.CreateTemp(name + ".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, p.Join(name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", p.Join(name), err)
	}
	return SyncDir(string(p))
}

// SyncDir fsyncs a directory, so that a rename into it survives a power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
