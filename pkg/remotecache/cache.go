package remotecache

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

// Cache returns an adapter of s to ggcr's cache.Cache interface, so code
// that used cache.NewFilesystemCache(dir) swaps one line:
//
//	img = cache.Image(img, remotecache.Cache(s))
//
// Unlike ggcr's filesystem cache it stores each layer once, compressed and
// named by its digest, verifies every read before serving it, and never
// recompresses: Uncompressed decompresses the cached blob. Get by a diff ID
// gives cache.ErrNotFound, which makes cache.Image fall back to Put of the
// real layer, whose Uncompressed is then served from the cached compressed
// blob.
//
// ggcr's cache.Cache methods take no context: the adapter uses
// context.Background() for its store operations.
func Cache(s *store.Store) cache.Cache {
	return &cacheAdapter{s: s}
}

type cacheAdapter struct {
	s *store.Store
}

var _ cache.Cache = (*cacheAdapter)(nil)

// Put implements cache.Cache. It returns a layer that serves Compressed
// from the store when it holds the blob, and otherwise streams the inner
// layer's bytes to the caller and into the store at once; Uncompressed
// decompresses that same compressed stream.
func (c *cacheAdapter) Put(l v1.Layer) (v1.Layer, error) {
	h, err := l.Digest()
	if err != nil {
		return nil, err
	}
	d, err := toDigest(h)
	if err != nil {
		return nil, err
	}
	return &teeLayer{Layer: l, s: c.s, d: d}, nil
}

// Get implements cache.Cache: a layer of the blob named h if the store
// holds it, else cache.ErrNotFound. A corrupted blob is removed and
// reported as not found, so the caller fetches it again.
//
// Get hashes the blob to find out: cache.Image serves the layer Get
// returns without falling back, so corruption found later, by Compressed,
// would fail the read instead of fetching the layer again. The verified
// file stays open and the first Compressed serves it, so a hit hashes the
// blob once; if nobody reads it, the file is closed when the layer is
// garbage collected.
func (c *cacheAdapter) Get(h v1.Hash) (v1.Layer, error) {
	d, err := toDigest(h)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	rc, info, err := c.s.OpenVerified(ctx, d)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCorrupted) {
		// OpenVerified removed a corrupted blob already.
		return nil, cache.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	v := &verifiedFile{rc: rc}
	sl := &storedLayer{s: c.s, d: d, h: h, size: info.Size, verified: v}
	// The file is closed with the layer only if nobody took it: a reader
	// handed out by Compressed outlives the layer (cache.Image drops the
	// layer at once) and is its caller's to close.
	runtime.AddCleanup(sl, (*verifiedFile).closeUntaken, v)
	return partial.CompressedToLayer(sl)
}

// Delete implements cache.Cache.
func (c *cacheAdapter) Delete(h v1.Hash) error {
	d, err := toDigest(h)
	if err != nil {
		return err
	}
	err = c.s.Delete(context.Background(), d)
	if errors.Is(err, store.ErrNotFound) {
		return cache.ErrNotFound
	}
	return err
}

// storedLayer is a compressed layer read from the store, verified before
// the first byte.
type storedLayer struct {
	s    *store.Store
	d    digest.Digest
	h    v1.Hash
	size int64

	verified *verifiedFile // opened and hashed by Get; served once
}

// verifiedFile is a blob Get verified, waiting for its first reader.
type verifiedFile struct {
	mu sync.Mutex
	rc io.ReadCloser
}

// take hands the file out, once.
func (v *verifiedFile) take() io.ReadCloser {
	v.mu.Lock()
	defer v.mu.Unlock()
	rc := v.rc
	v.rc = nil
	return rc
}

// closeUntaken closes the file if nobody took it.
func (v *verifiedFile) closeUntaken() {
	if rc := v.take(); rc != nil {
		rc.Close()
	}
}

func (l *storedLayer) Digest() (v1.Hash, error) { return l.h, nil }
func (l *storedLayer) Size() (int64, error)     { return l.size, nil }

func (l *storedLayer) Compressed() (io.ReadCloser, error) {
	if rc := l.verified.take(); rc != nil {
		return rc, nil
	}
	rc, _, err := l.s.OpenVerified(context.Background(), l.d)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCorrupted) {
		return nil, fmt.Errorf("layer %s: %w (%v)", l.d, cache.ErrNotFound, err)
	}
	return rc, err
}

// MediaType guesses from the blob's magic bytes: the store keeps no media
// types. It reads four bytes, unverified: a guess needs no hash of the
// whole blob, and every read of the content is verified.
func (l *storedLayer) MediaType() (types.MediaType, error) {
	rc, err := l.s.Open(context.Background(), l.d)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	head, _ := bufio.NewReader(rc).Peek(4)
	switch {
	case bytes.HasPrefix(head, zstdMagic):
		return types.OCILayerZStd, nil
	case bytes.HasPrefix(head, gzipMagic):
		return types.DockerLayer, nil
	default:
		return types.OCIUncompressedLayer, nil
	}
}

// teeLayer is the layer cache.Put returns.
type teeLayer struct {
	v1.Layer
	s *store.Store
	d digest.Digest
}

// Compressed serves the blob through the fetch step (fetchstep.go), as a
// pull does: from the store, verified, or from the inner layer into the
// store, under the blob's lock, so that processes pulling the same image
// through the adapter at once download each blob once.
func (l *teeLayer) Compressed() (io.ReadCloser, error) {
	size, err := l.Layer.Size()
	if err != nil {
		size = -1
	}
	step := &fetchStep{s: l.s, d: l.d, size: size, src: l.source}
	rc, _, err := step.open(context.Background())
	return rc, err
}

// source opens the inner layer: from its first byte only, since a layer
// has no ranges; a cut is the inner layer's to retry.
func (l *teeLayer) source(context.Context, int64) (io.ReadCloser, int64, int64, bool, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, 0, 0, false, err
	}
	return rc, 0, -1, true, nil
}

// Uncompressed decompresses Compressed; see layer.Uncompressed for why the
// output is not hashed again.
func (l *teeLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	u, err := decompress(rc)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("layer %s: %w", l.d, err)
	}
	return u, nil
}

// Descriptor and Exists forward the inner layer's, so remote.Write keeps
// its shortcuts. See partial.Descriptor and partial.Exists.
func (l *teeLayer) Descriptor() (*v1.Descriptor, error) { return partial.Descriptor(l.Layer) }
func (l *teeLayer) Exists() (bool, error)               { return partial.Exists(l.Layer) }
