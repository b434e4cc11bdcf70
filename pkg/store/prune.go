package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/internal/faultpoint"
)

// Policy says what Prune evicts. The zero Policy evicts nothing but still
// drops dangling refs and sweeps ingest/.
type Policy struct {
	// MaxSize bounds the total bytes of blobs kept: the least recently
	// used blobs are evicted until the rest fit. 0 means no bound.
	MaxSize int64
	// MaxAge evicts every blob not used for longer than this. 0 means
	// no bound.
	MaxAge time.Duration
	// DryRun reports what would be evicted and changes nothing.
	DryRun bool
}

// PruneReport says what Prune did, or would do with DryRun.
type PruneReport struct {
	Removed     []Info   // evicted blobs, least recently used first
	FreedBytes  int64    // sum of the sizes of Removed
	Kept        int      // blobs left
	KeptBytes   int64    // bytes left
	DroppedRefs []string // refs of index.json whose manifest is gone
	Swept       int      // stale files removed from ingest/
}

// Prune evicts blobs by the policy: first every blob older than MaxAge,
// then the least recently used until the rest total at most MaxSize. It
// then drops the refs of index.json whose manifests are no longer stored,
// and sweeps ingest/ of litter older than an hour.
//
// Prune is safe while other processes read and write the store: a reader
// that has a blob open keeps reading it, and a blob used again after Prune
// listed it (its last use moved) is kept. It checks ctx between blobs.
func (s *Store) Prune(ctx context.Context, p Policy) (rep PruneReport, err error) {
	defer diskerr.MarkAt(&err)
	if p.MaxSize < 0 || p.MaxAge < 0 {
		return PruneReport{}, errors.New("prune: negative max size or max age")
	}
	var all []Info
	if err := s.Walk(ctx, func(i Info) error { all = append(all, i); return nil }); err != nil {
		return PruneReport{}, err
	}
	sort.Slice(all, func(i, j int) bool {
		// Last use is only refreshed hourly, so it orders blobs by the
		// hour, not by the instant: within an hour the blobs of an image
		// warmed together count as used together.
		ti, tj := all[i].LastUsed.Truncate(lastUseInterval), all[j].LastUsed.Truncate(lastUseInterval)
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		// Among blobs used at the same time (an image warmed at once),
		// evict the largest first: dropping a layer frees space, while
		// dropping a tiny manifest frees nothing and loses the ref.
		if all[i].Size != all[j].Size {
			return all[i].Size > all[j].Size
		}
		return all[i].Digest < all[j].Digest
	})
	var total int64
	for _, i := range all {
		total += i.Size
	}
	cutoff := time.Time{}
	if p.MaxAge > 0 {
		cutoff = s.now().Add(-p.MaxAge)
	}
	for _, i := range all {
		old := p.MaxAge > 0 && i.LastUsed.Before(cutoff)
		big := p.MaxSize > 0 && total > p.MaxSize
		if !old && !big {
			rep.Kept++
			rep.KeptBytes += i.Size
			continue
		}
		if !p.DryRun {
			removed, err := s.evict(ctx, i)
			if err != nil {
				return rep, err
			}
			if !removed {
				rep.Kept++
				rep.KeptBytes += i.Size
				continue
			}
			faultpoint.Hit("prune:evicted")
		}
		rep.Removed = append(rep.Removed, i)
		rep.FreedBytes += i.Size
		total -= i.Size
	}
	faultpoint.Hit("prune:before-index")
	dropped, err := s.dropDanglingRefs(ctx, p.DryRun, rep.Removed)
	if err != nil {
		return rep, err
	}
	rep.DroppedRefs = dropped
	if !p.DryRun {
		n, err := s.path.Sweep(ctx, s.now().Add(-sweepAge))
		if err != nil {
			return rep, err
		}
		rep.Swept = n
	}
	return rep, nil
}

// evict removes the blob of i unless it was used again since i was taken.
func (s *Store) evict(ctx context.Context, i Info) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	path, err := s.blobPath(i.Digest)
	if err != nil {
		return false, err
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // someone else removed it
	}
	if err != nil {
		return false, fmt.Errorf("blob %s (%s): %w", i.Digest, path, err)
	}
	if !fi.ModTime().Equal(i.LastUsed) {
		return false, nil // used (or rewritten) since the walk
	}
	if err := os.RemoveAll(path); err != nil {
		return false, fmt.Errorf("blob %s (%s): %w", i.Digest, path, err)
	}
	return true, nil
}

// dropDanglingRefs removes the refs whose manifest blob is gone. With
// dryRun it counts the refs whose manifest is gone or in removed.
func (s *Store) dropDanglingRefs(ctx context.Context, dryRun bool, removed []Info) ([]string, error) {
	removedSet := make(map[digest.Digest]bool, len(removed))
	for _, r := range removed {
		removedSet[r.Digest] = true
	}
	gone := func(m ocispec.Descriptor) bool {
		if removedSet[m.Digest] {
			return true
		}
		_, err := s.Stat(ctx, m.Digest)
		return errors.Is(err, ErrNotFound)
	}
	var dropped []string
	if dryRun {
		refs, err := s.Refs(ctx)
		if err != nil {
			return nil, err
		}
		for _, m := range refs {
			if gone(m) {
				dropped = append(dropped, m.Annotations[refAnnotation])
			}
		}
		return dropped, nil
	}
	err := s.path.UpdateIndex(ctx, func(idx *ocispec.Index) error {
		dropped = dropped[:0]
		kept := idx.Manifests[:0]
		for _, m := range idx.Manifests {
			if _, err := s.Stat(ctx, m.Digest); errors.Is(err, ErrNotFound) {
				dropped = append(dropped, m.Annotations[refAnnotation])
				continue
			}
			kept = append(kept, m)
		}
		idx.Manifests = kept
		return nil
	})
	return dropped, err
}
