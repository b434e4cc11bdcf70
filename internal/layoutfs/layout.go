// Package layoutfs is the plumbing under pkg/store's writes to a layout:
// creating and adopting the directory, temporary files and flock(2) locks
// in ingest/, sweeping ingest/ litter, and the locked, atomic rewrites of
// index.json and of the stats file. The format itself (digest → path,
// recognition, reading index.json) is package layout's; this package
// re-exports it (format.go) so that its code and tests read as one.
//
// Only pkg/store imports it: a test in this package says so.
package layoutfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/internal/faultpoint"
	"github.com/ocibuild/layercache/internal/fsutil"
)

// layoutVersion is the only imageLayoutVersion the OCI image spec defines.
const layoutVersion = "1.0.0"

// Path is the absolute root of a layout on disk, with the plumbing of
// the cache's writers. layout.Path(p) is the same root as the format
// readers see.
type Path string

// Create makes dir a layout, or reuses it if it already is one. A missing or
// empty directory is initialised; a directory holding an oci-layout file is
// reused (missing blobs/ and ingest/ folders are created where the directory
// is writable); a directory holding only what a Create interrupted before it
// wrote oci-layout leaves (see foreignEntry) is finished. Any other
// directory is refused with ErrNotLayout, and nothing in it is changed: a
// folder of someone's files is never adopted because its entries have a
// layout's names. A path that exists but is not a directory is refused too.
//
// Create is safe to call from many processes at once: the layout files are
// published by rename, so a concurrent caller sees either no oci-layout file
// or a whole one, and what it sees before that is what foreignEntry accepts.
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
		foreign, err := p.foreignEntry()
		if err != nil {
			return "", err
		}
		if foreign != "" {
			// Another process creating this cache may have finished
			// since isLayout looked, and then made files a partial
			// layout does not hold (blobs, refs). oci-layout is written
			// last and never removed, so looking again tells.
			if isLayout, err = p.isLayout(); err != nil {
				return "", err
			}
		}
		if foreign != "" && !isLayout {
			return "", fmt.Errorf("cache dir %s: %w: it has no %s and holds %s, which layercache did not create; refusing to use it",
				abs, ErrNotLayout, LayoutFile, foreign)
		}
	}
	if err := p.ensureDirs(); err != nil {
		return "", err
	}
	if !isLayout {
		if err := p.init(); err != nil {
			return "", err
		}
	}
	return p, nil
}

// ensureDirs makes blobs/ and ingest/ where they are missing, and replaces
// whatever stands at blobs/, blobs/<alg> or ingest/ that is not a real
// directory. A symlink there (planted, or restored from a CI cache) would
// make writes, sweeps and Clear act on files outside the cache; removing
// the link itself touches nothing outside. A layout on a read-only file
// system is still usable for reads if its folders are missing, but not if
// one of them is a symlink.
func (p Path) ensureDirs() error {
	dirs := []string{p.Join(BlobsDir), p.Join(IngestDir)}
	for _, alg := range Algorithms {
		dirs = append(dirs, p.AlgorithmDir(alg))
	}
	for i, d := range dirs {
		fi, err := os.Lstat(d)
		switch {
		case err == nil && fi.IsDir():
			continue
		case err == nil:
			if rerr := os.Remove(d); rerr != nil {
				return fmt.Errorf("cache dir %s: %w: %s is a %v, not a directory, and cannot be replaced: %v", p, ErrNotLayout, d, fi.Mode().Type(), rerr)
			}
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("cache dir %s: %w", p, err)
		}
		if i >= 2 {
			continue // blobs/<alg> is made by the first write of such a blob
		}
		// Best effort: a read-only layout is still a usable one for reads.
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) && !errors.Is(diskerr.Mark(err), diskerr.ErrReadOnly) {
			return fmt.Errorf("cache dir %s: %w", p, err)
		}
	}
	return nil
}

// CheckDir returns an error wrapping ErrNotLayout if dir, one of the
// layout's own folders (blobs/, blobs/<alg>, ingest/), is a symlink or
// anything else but a directory, and nil if it is a directory or missing.
// Create replaces such entries; CheckDir guards the writes, sweeps and
// removals of a process that opened the layout before one was planted, so
// that they never act through a symlink on files outside the cache.
func CheckDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil || fi.IsDir() {
		return nil // a missing folder is made, or reported, by its user
	}
	return fmt.Errorf("%w: %s is a %v, not a directory; refusing to use it", ErrNotLayout, dir, fi.Mode().Type())
}

// foreignEntry returns the first entry of a directory without oci-layout
// (relative to the root) that a Create of layercache, interrupted before it
// wrote oci-layout, does not leave; or "" if there is none, so that Create
// may finish the job. A directory whose entries merely have a layout's
// names is someone else's: Create would fill it, and Sweep would act in
// its ingest/. So the rule is what Create makes, in the order it makes it:
//
//   - blobs/: a real, empty directory (blobs/<alg> folders are made by the
//     first write of a blob, after oci-layout exists);
//   - ingest/: a real directory holding only regular files named as
//     layercache names its temp and lock files (isIngestName);
//   - index.json: a regular file holding exactly the empty index that
//     initIndex writes.
//
// Anything else, oci-layout included (another process may have written it
// since Create looked for it), is returned, and Create looks for
// oci-layout again before it refuses the directory. An empty directory
// has no foreign entry.
func (p Path) foreignEntry() (string, error) {
	entries, err := fsutil.ReadDir(string(p), false)
	if err != nil {
		return "", fmt.Errorf("cache dir %s: %w", p, err)
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == BlobsDir && e.IsDir():
			inner, err := fsutil.ReadDir(p.Join(name), true)
			if err != nil {
				return name, nil
			}
			if len(inner) > 0 {
				return name + "/" + inner[0].Name(), nil
			}
		case name == IngestDir && e.IsDir():
			inner, err := fsutil.ReadDir(p.Join(name), true)
			if err != nil {
				return name, nil
			}
			for _, f := range inner {
				if !f.Type().IsRegular() || !isIngestName(f.Name()) {
					return name + "/" + f.Name(), nil
				}
			}
		case name == IndexFile && e.Type().IsRegular():
			want, err := emptyIndexJSON()
			if err != nil {
				return "", err
			}
			b, err := fsutil.ReadSmallFile(p.Join(name), int64(len(want)))
			if err != nil || !bytes.Equal(b, want) {
				return name, nil
			}
		default:
			return name, nil
		}
	}
	return "", nil
}

// init writes the layout files. index.json comes first and oci-layout last,
// so a directory holding oci-layout is always a complete layout.
func (p Path) init() error {
	for _, d := range []string{BlobsDir, IngestDir} {
		if err := os.MkdirAll(p.Join(d), 0o755); err != nil {
			return fmt.Errorf("cache dir %s: %w", p, err)
		}
	}
	if err := p.initIndex(); err != nil {
		return err
	}
	b := []byte(`{"imageLayoutVersion":"` + layoutVersion + `"}`)
	return p.writeFileAtomic(LayoutFile, b)
}

// initIndex writes an empty index.json if there is none, and never
// replaces one. Processes that create one cache at once all find no
// index.json at first; one that looked before another wrote the file, and
// replaced it after that other had recorded a ref in it, would lose the
// ref. So the file is published with link(2), which fails if the name
// exists, rather than rename(2); a file system without hard links falls
// back to a rename under the index lock, which UpdateIndex holds too.
func (p Path) initIndex() error {
	path := p.Join(IndexFile)
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	b, err := emptyIndexJSON()
	if err != nil {
		return err
	}
	f, err := p.CreateTemp(IndexFile + ".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	faultpoint.Hit(IndexFile + ":before-link")
	err = os.Link(tmp, path)
	switch {
	case err == nil:
		return fsutil.SyncDir(string(p))
	case errors.Is(err, fs.ErrExist):
		return nil // another process made it first: keep theirs
	}
	l, lerr := p.LockIndex(context.Background())
	if lerr != nil {
		return fmt.Errorf("cache dir %s: %w", p, lerr)
	}
	defer l.Unlock()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return p.writeFileAtomic(IndexFile, b)
}

// writeFileAtomic writes name below the root durably: a temp file in
// ingest/, fsync, rename, fsync of the root directory. Readers see the old
// file or the new one, never a torn one, even after a power loss.
func (p Path) writeFileAtomic(name string, data []byte) error {
	return p.replaceFile(name, data, true)
}

// replaceFile writes name below the root through a temp file in ingest/
// and a rename, so readers see the old file or the new one, never a torn
// one. With durable, the file is fsynced before the rename and the root
// directory after, so the new file also survives a power loss.
func (p Path) replaceFile(name string, data []byte, durable bool) error {
	f, err := p.CreateTemp(name + ".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	faultpoint.Hit(name + ":temp-written")
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		faultpoint.Hit(name + ":before-rename")
		err = os.Rename(tmp, p.Join(name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", p.Join(name), err)
	}
	faultpoint.Hit(name + ":after-rename")
	if !durable {
		return nil
	}
	return fsutil.SyncDir(string(p))
}
