// Package store is a content-addressed blob store on disk whose every read
// is verified against the blob's digest.
//
// A Store lives in a directory laid out as an OCI image layout (see package
// layout). Blobs are immutable files named by their digest. They are written
// to ingest/, hashed on the way, and appear at their final name only by
// rename once their bytes matched: a file at its final name is a whole blob
// that hashed to its name when it was written. Reads hash again, because
// disks, power losses and people with editors break that promise later;
// a blob that fails is removed and reported as ErrCorrupted.
//
// # Concurrency
//
// A Store is safe for use by many goroutines, and many processes on one
// host may open the same directory at once. Readers take no lock: files
// never change once renamed in, and an open file stays readable when
// another process deletes or prunes it. Two writers of the same digest are
// harmless, as both rename the same bytes into place. A crash or SIGKILL at
// any instant leaves either no blob or a whole one; what it leaves in
// ingest/ is swept by a later Open or Clear once it is an hour old.
//
// The store relies on atomic rename and flock(2) semantics of a local file
// system. On NFS and other network file systems, rename is atomic but locks
// and timestamps may not be: share a cache between machines by copying it
// (as CI caches do), not by mounting it.
package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/internal/faultpoint"
	"github.com/ocibuild/layercache/internal/layoutfs"
)

// sweepAge is how old a file in ingest/ must be before Open or Clear
// removes it. A temp file of a live writer is younger than the time one
// blob takes to download; an hour leaves room for a slow multi-GiB layer.
const sweepAge = time.Hour

// lastUseInterval bounds how often a read refreshes a blob's last-use time
// (its mtime). Refreshing on every read would turn reads into writes; prune
// needs last use only to the hour, as Go's build cache does with its
// mtimeInterval (golang.org/issue/22990).
const lastUseInterval = time.Hour

// Store is a verified, content-addressed blob store in one directory.
type Store struct {
	path    layoutfs.Path
	durable bool
	log     *slog.Logger
	now     func() time.Time
	locks   blobLocks
	counts  counting // see Count
	hashing hashing  // see hashFile
}

// Info describes a stored blob, from the file system alone (no hashing).
type Info struct {
	Digest digest.Digest
	Size   int64
	// LastUsed is when the blob was last written or read, to within
	// an hour (see lastUseInterval).
	LastUsed time.Time
}

// Open opens the store in dir, creating the layout if dir is missing or
// empty, and reusing it if dir already is an OCI image layout. A path that
// is a file, or a non-empty directory that is not a layout (say $HOME by
// mistake), is refused with an error wrapping ErrNotLayout. A layout on a
// read-only file system opens fine: reads work, writes fail with an error
// wrapping ErrReadOnly.
//
// Open sweeps ingest/ of temp files older than an hour that crashed writers
// left behind, and rebuilds an index.json that is not a valid OCI image
// index from the blobs, with a warning: the bad file is kept as
// index.json.corrupt, and the stored images are listed again without their
// ref names.
func Open(dir string, opts ...Option) (s *Store, err error) {
	defer diskerr.MarkAt(&err)
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	p, err := layoutfs.Create(dir)
	if err != nil {
		return nil, err
	}
	s = &Store{path: p, durable: o.durable, log: o.logger, now: o.now}
	if _, err := p.ReadIndex(); errors.Is(err, layoutfs.ErrBadIndex) {
		// Reported here, where there is a logger; layout keeps the bad
		// file as index.json.corrupt and lists what the blobs hold.
		if rebuilt, n, rerr := p.RepairIndex(context.Background()); rerr != nil {
			s.log.Warn("index.json is not a valid OCI image index and cannot be rebuilt; refs will not resolve offline",
				"path", p.Join(layoutfs.IndexFile), "err", err, "rebuild", rerr)
		} else if rebuilt {
			s.log.Warn("index.json was not a valid OCI image index; kept it as "+layoutfs.CorruptIndexFile+
				" and rebuilt it from the blobs, without ref names (warm the images again to name them)",
				"path", p.Join(layoutfs.IndexFile), "err", err, "images", n)
		}
	}
	if n, err := p.Sweep(context.Background(), s.now().Add(-sweepAge)); err != nil {
		s.log.Debug("sweeping ingest", "err", err)
	} else if n > 0 {
		s.log.Debug("swept stale files from ingest", "count", n, "dir", p.Join(layoutfs.IngestDir))
	}
	return s, nil
}

// Dir returns the absolute directory of the store.
func (s *Store) Dir() string { return string(s.path) }

// Stat returns the size and last use of a stored blob without reading it,
// or, with VerifyFirst, after hashing it: then a blob whose bytes do not
// match gives ErrCorrupted. Stat never changes the store: it neither
// refreshes the last use nor removes a corrupted blob. A missing blob gives
// ErrNotFound; an entry that is not a regular file (a directory or a
// symlink planted at the blob's name) gives ErrCorrupted.
func (s *Store) Stat(ctx context.Context, d digest.Digest, opts ...ReadOption) (info Info, err error) {
	defer diskerr.MarkAt(&err)
	if makeReadOptions(opts).verifyFirst {
		return s.verify(ctx, d)
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	path, err := s.blobPath(d)
	if err != nil {
		return Info{}, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return Info{}, s.mapErr(d, path, err)
	}
	if !fi.Mode().IsRegular() {
		return Info{}, fmt.Errorf("blob %s (%s): %w: not a regular file (%s)", d, path, ErrCorrupted, fi.Mode().Type())
	}
	return Info{Digest: d, Size: fi.Size(), LastUsed: fi.ModTime()}, nil
}

// Delete removes a blob. A missing blob gives ErrNotFound. A reader that
// has the blob open keeps reading it.
func (s *Store) Delete(ctx context.Context, d digest.Digest) (err error) {
	defer diskerr.MarkAt(&err)
	if err := ctx.Err(); err != nil {
		return err
	}
	path, err := s.blobPath(d)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(path); err != nil {
		return s.mapErr(d, path, err)
	}
	// RemoveAll, not Remove: a directory planted at a blob's name is
	// removed too. It never follows symlinks.
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("blob %s (%s): %w", d, path, err)
	}
	return nil
}

// Clear removes every blob and every ref, and sweeps ingest/ of litter
// older than an hour. It removes only what the store owns: files in
// blobs/sha256 and blobs/sha512 and the entries of index.json. Other files
// in the directory are left alone. The store stays usable: a Put right
// after Clear works.
//
// Blobs and litter go first and index.json after them: on a full disk, the
// rewrite of index.json (a temp file, then a rename) can fail, while
// removing files needs no space and frees it. Clear then returns the
// rewrite's error with the blobs gone. The refs it leaves name blobs that are not stored,
// which readers of refs already handle: Resolve does not look at blobs,
// `layercache images` shows the image as incomplete, and a pull fetches
// what is missing.
func (s *Store) Clear(ctx context.Context) (err error) {
	defer diskerr.MarkAt(&err)
	if blobs := s.path.Join(layoutfs.BlobsDir); layoutfs.CheckDir(blobs) != nil {
		// A symlink planted at blobs/: remove the link, never what it
		// points at. Nothing below it is ours.
		if err := os.Remove(blobs); err != nil {
			return fmt.Errorf("clearing %s: %w", blobs, err)
		}
	}
	for _, alg := range layoutfs.Algorithms {
		dir := s.path.AlgorithmDir(alg)
		if layoutfs.CheckDir(dir) != nil {
			// A symlink planted at blobs/<alg>: remove the link, never
			// what it points at.
			if err := os.Remove(dir); err != nil {
				return fmt.Errorf("clearing %s: %w", dir, err)
			}
			continue
		}
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("clearing %s: %w", dir, err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			if _, err := layoutfs.ParseBlobName(alg, e.Name()); err != nil {
				continue // not a blob's name: not ours to remove
			}
			if err := os.RemoveAll(dir + string(os.PathSeparator) + e.Name()); err != nil {
				return fmt.Errorf("clearing %s: %w", dir, err)
			}
			faultpoint.Hit("clear:removed")
		}
	}
	_, sweepErr := s.path.Sweep(ctx, s.now().Add(-sweepAge))
	if err := s.path.UpdateIndex(ctx, func(idx *ocispec.Index) error {
		idx.Manifests = nil
		return nil
	}); err != nil {
		return errors.Join(fmt.Errorf("clearing refs: %w", err), sweepErr)
	}
	return sweepErr
}

// blobPath returns the path of the blob d, after checking that blobs/ and
// blobs/<alg> are real directories: a symlink planted there after Open
// must not make the store read, write or remove files outside the cache.
func (s *Store) blobPath(d digest.Digest) (string, error) {
	path, err := s.path.BlobPath(d)
	if err != nil {
		return "", err
	}
	for _, dir := range []string{s.path.Join(layoutfs.BlobsDir), s.path.AlgorithmDir(d.Algorithm())} {
		if err := layoutfs.CheckDir(dir); err != nil {
			return "", fmt.Errorf("blob %s: %w", d, err)
		}
	}
	return path, nil
}

// mapErr turns a file-system error about the blob d at path into the
// store's vocabulary: fs.ErrNotExist becomes ErrNotFound, and every other
// error passes through wrapped (so fs.ErrPermission stays matchable).
func (s *Store) mapErr(d digest.Digest, path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return fmt.Errorf("blob %s (%s): %w", d, path, err)
}
