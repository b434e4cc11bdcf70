package remotecache

import (
	"context"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ocibuild/layercache/pkg/store"
)

// The registry entry points: what a server of the distribution API's pull
// side (layercache serve) needs, one blob or one manifest at a time, on
// the same roads as Image and Warm.

// Blob returns the blob h of the repository repo: from the store s,
// verified before its first byte, or on a miss through the fetch step
// that every pull takes (mirrors first, see WithMirrors), streamed to the
// caller while it is written to the store, under the blob's lock (so that
// one download serves every process on the host), resumed where a cut
// broke it, and committed only when every byte matched h.
//
// size is the blob's size: the stored file's on a hit, and on a miss what
// the registry said, or -1 if it did not say.
//
// ctx governs the whole download, not just the call: reading rc fails
// once ctx is done, and the blob is then not committed (its partial file
// is kept for the next download to resume). A caller that stops reading
// early and closes rc abandons the download the same way; a caller that
// wants the blob cached whatever its client does reads rc to its end.
// rc returns io.EOF only once the whole blob matched h; before, a blob
// that turns out wrong gives an error wrapping store.ErrDigestMismatch.
// Close rc in every case: a miss holds the blob's lock until then.
//
// With WithOffline, a blob the store does not hold is ErrOffline.
// WithContext is ignored: ctx is the context.
func Blob(ctx context.Context, repo name.Repository, h v1.Hash, s *store.Store, opts ...Option) (rc io.ReadCloser, size int64, err error) {
	o, err := makeOptions(withContext(ctx, opts))
	if err != nil {
		return nil, -1, err
	}
	d, err := toDigest(h)
	if err != nil {
		return nil, -1, fmt.Errorf("blob %s: %w", h, err)
	}
	p := newPuller(s, o, repo)
	hit, info, herr := s.OpenVerified(ctx, d)
	if herr == nil {
		p.stats.hit(info.Size)
		return hit, info.Size, nil
	}
	// A corrupted blob was removed by OpenVerified: it is fetched again.
	p.noteStoreReadError(d, herr)
	if p.offline {
		return nil, -1, fmt.Errorf("blob %s: %w", d, ErrOffline)
	}
	rc, cached, err := p.step(d, -1).open(ctx)
	if err != nil {
		return nil, -1, err
	}
	if cached {
		// Another download stored it while this one waited for the lock.
		info, err := s.Stat(ctx, d)
		if err != nil {
			rc.Close()
			return nil, -1, err
		}
		return rc, info.Size, nil
	}
	return rc, rc.(*teeReader).size, nil
}

// Manifest returns the manifest or index ref names, and its descriptor
// (its digest, its size, and the media type its bytes declare), as Image
// and Warm resolve it: a digest from the store, verified, or else from the
// hosts of the pull; a tag from the registry (GET if the cache never
// recorded it, HEAD if it did) or, as the resolve policy allows (see
// ResolvePolicy, WithOffline), from the cache's index.json when the
// registry cannot be reached. A manifest over store.MaxBlobInMemory bytes
// is refused.
//
// A tag resolved online is recorded in index.json, as Image does, once
// what it names parses as a schema 2 manifest or index; something else
// (an artifact of another schema) is returned but not recorded, so that it
// never resolves offline. WithContext is ignored: ctx is the context.
func Manifest(ctx context.Context, ref name.Reference, s *store.Store, opts ...Option) (v1.Descriptor, []byte, error) {
	o, err := makeOptions(withContext(ctx, opts))
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	p := newPuller(s, o, ref.Context())
	desc, raw, release, err := p.resolve(ctx, ref)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	defer release()
	if desc.MediaType.IsIndex() {
		_, err = newIndex(p, ref, desc, raw)
	} else {
		_, err = newImage(p, ref, desc, raw)
	}
	if err == nil {
		p.recordRef(ctx, ref, desc)
	}
	return desc, raw, nil
}

// withContext returns opts, then WithContext(ctx), in a slice of its own:
// the caller's may be shared between goroutines.
func withContext(ctx context.Context, opts []Option) []Option {
	return append(append(make([]Option, 0, len(opts)+1), opts...), WithContext(ctx))
}
