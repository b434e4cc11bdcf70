package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/internal/layoutfs"
)

// Walk calls fn for every blob in the store, sha256 first, then sha512, in
// directory order, with its Info from the file system (nothing is hashed;
// use Verify for that). Files in blobs/ whose names are not digests are not
// the store's and are skipped. An entry at a blob's name that is not a
// regular file is reported with Size 0, so that a Verify of it reports it.
// Walk stops at the first error of fn, which it returns, and checks ctx
// between blobs. Blobs added or removed during the walk may or may not be
// visited.
func (s *Store) Walk(ctx context.Context, fn func(Info) error) (err error) {
	defer diskerr.MarkAt(&err)
	if layoutfs.CheckDir(s.path.Join(layoutfs.BlobsDir)) != nil {
		return nil // a planted symlink holds no blob of ours
	}
	for _, alg := range layoutfs.Algorithms {
		dir := s.path.AlgorithmDir(alg)
		if layoutfs.CheckDir(dir) != nil {
			continue // a planted symlink holds no blob of ours
		}
		f, err := os.Open(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("walking %s: %w", dir, err)
		}
		err = walkDir(ctx, f, alg, fn)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func walkDir(ctx context.Context, f *os.File, alg digest.Algorithm, fn func(Info) error) error {
	for {
		// Batches keep memory flat for caches of many small blobs.
		entries, err := f.ReadDir(1024)
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, perr := layoutfs.ParseBlobName(alg, e.Name())
			if perr != nil {
				continue
			}
			fi, ierr := e.Info()
			if errors.Is(ierr, fs.ErrNotExist) {
				continue // removed since the directory was read
			}
			if ierr != nil {
				return fmt.Errorf("blob %s: %w", d, ierr)
			}
			info := Info{Digest: d, LastUsed: fi.ModTime()}
			if fi.Mode().IsRegular() {
				info.Size = fi.Size()
			}
			if err := fn(info); err != nil {
				return err
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("walking %s: %w", f.Name(), err)
		}
	}
}
