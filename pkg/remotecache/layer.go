package remotecache

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/ocibuild/layercache/pkg/store"
)

// layer is one layer of an image, read through the puller: the compressed
// blob from the store or the registry, and its uncompressed form from
// decompressing that, never from a second download.
type layer struct {
	img   *image
	index int
	desc  v1.Descriptor
}

var (
	_ v1.Layer = (*layer)(nil)
)

// Digest implements v1.Layer.
func (l *layer) Digest() (v1.Hash, error) { return l.desc.Digest, nil }

// Size implements v1.Layer: the compressed size from the manifest.
func (l *layer) Size() (int64, error) { return l.desc.Size, nil }

// MediaType implements v1.Layer.
func (l *layer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

// Descriptor keeps the manifest's descriptor (URLs, annotations) for
// remote.Write. See partial.Descriptor.
func (l *layer) Descriptor() (*v1.Descriptor, error) {
	d := l.desc
	return &d, nil
}

// DiffID implements v1.Layer, from the image config: no decompression.
func (l *layer) DiffID() (v1.Hash, error) {
	cf, err := l.img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	if l.index >= len(cf.RootFS.DiffIDs) {
		return v1.Hash{}, fmt.Errorf("%s: config has %d diff IDs, no entry for layer %d (%s)",
			l.img.ref, len(cf.RootFS.DiffIDs), l.index, l.desc.Digest)
	}
	return cf.RootFS.DiffIDs[l.index], nil
}

// Compressed implements v1.Layer: the blob verified from the store, or
// streamed from the registry into the store at once.
//
// On a miss the reader holds the blob's download lock until it is closed,
// so that other goroutines and processes wait for this download instead
// of starting their own. Close each reader before opening the same
// missing layer again from the same goroutine, or the second read waits
// for the first (until the context given by WithContext ends).
//
// The blob is opened on the first Read, not here: ggcr's layout writer,
// for one, opens every layer and closes the ones it already has unread,
// and an unread open must neither hash a cached blob nor start a download
// (and take its lock). What can be known cheaply fails here: an invalid
// digest, and a blob that an offline pull does not have.
func (l *layer) Compressed() (io.ReadCloser, error) {
	d, err := toDigest(l.desc.Digest)
	if err != nil {
		return nil, err
	}
	p, ctx := l.img.p, l.img.ctx()
	if p.offline {
		if _, err := p.s.Stat(ctx, d); errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%s: layer %s: %w", l.img.ref, d, ErrOffline)
		}
	}
	return &lazyReader{open: func() (io.ReadCloser, error) {
		rc, _, err := p.openLayer(ctx, d, l.desc.Size)
		if err != nil {
			return nil, fmt.Errorf("%s: layer %s: %w", l.img.ref, d, err)
		}
		return rc, nil
	}}, nil
}

// lazyReader opens its stream on the first Read. Closing it unread opens
// nothing.
type lazyReader struct {
	open func() (io.ReadCloser, error)
	rc   io.ReadCloser
	err  error
}

func (r *lazyReader) init() error {
	if r.rc == nil && r.err == nil {
		r.rc, r.err = r.open()
	}
	return r.err
}

func (r *lazyReader) Read(p []byte) (int, error) {
	if err := r.init(); err != nil {
		return 0, err
	}
	return r.rc.Read(p)
}

// WriteTo lets io.Copy use the underlying reader's large-buffer copy.
func (r *lazyReader) WriteTo(w io.Writer) (int64, error) {
	if err := r.init(); err != nil {
		return 0, err
	}
	return io.Copy(w, r.rc)
}

func (r *lazyReader) Close() error {
	if r.rc == nil {
		r.err = errors.New("read of a closed layer reader")
		return nil
	}
	return r.rc.Close()
}

// Uncompressed implements v1.Layer: it decompresses the compressed blob
// (gzip or zstd, found from its magic bytes), which Compressed verified
// before serving its first byte.
//
// The output is not hashed again to check it against the diff ID of the
// image config: the bytes it comes from are verified, and decompressing
// them always gives the same output, so a second hash of every byte would
// find nothing that the first did not. A config whose diff IDs do not
// match its layers is a fault of the image, not of the cache; ggcr's
// validate.Image finds it, and ggcr's own remote layers do not check it
// either.
func (l *layer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	u, err := decompress(rc)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%s: layer %s: %w", l.img.ref, l.desc.Digest, err)
	}
	return u, nil
}

// maxZstdWindow bounds the window a zstd layer may ask its decoder for.
// The window is allocated as soon as a frame's header is read, so without
// a bound a 13-byte frame declaring 512 MiB costs 512 MiB (klauspost's
// default limit). zstd's own levels use at most 8 MiB, and --long or
// --ultra at most 128 MiB, which is still allowed; past that a layer is
// refused with the decoder's error.
const maxZstdWindow = 128 << 20

// Magic bytes of the compressions a layer may use.
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompress returns the uncompressed stream of rc. Closing it closes rc.
// klauspost/compress decoders are used: they are faster than the standard
// library's (see the README's performance section). The decoders read
// through a 128 KiB buffer: without one, flate reads 4 KiB at a time, and
// larger ones measured slower (bench/ row 2r: 0.83x with 1 MiB, 0.87x with
// 128 KiB).
func decompress(rc io.ReadCloser) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(rc, 128<<10)
	head, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return &stackedReader{Reader: zr, closers: []func() error{zr.Close, rc.Close}}, nil
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return &stackedReader{Reader: zr, closers: []func() error{func() error { zr.Close(); return nil }, rc.Close}}, nil
	default:
		// An uncompressed layer (application/vnd.oci.image.layer.v1.tar).
		return &stackedReader{Reader: br, closers: []func() error{rc.Close}}, nil
	}
}

// stackedReader reads from a decoder and closes the whole stack.
type stackedReader struct {
	io.Reader
	closers []func() error
}

func (s *stackedReader) Close() error {
	var first error
	for _, c := range s.closers {
		if err := c(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
