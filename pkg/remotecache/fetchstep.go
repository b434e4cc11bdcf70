package remotecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

// The fetch step.
//
// Every blob miss takes one road, whatever asked for it: the layers of
// Image and Index, Warm, the Cache adapter and the Transport. fetchStep
// owns it:
//
//  1. the verified open of the cached blob (a hit: hashed before its
//     first byte, so a corrupted one is removed and fetched again);
//  2. the blob's lock (store.LockBlob: in-process and flock), and the
//     same open again once it is held, since the holder we waited for
//     may have stored the blob;
//  3. the download, through the store's partial file for the blob
//     (store.OpenPartial), streamed to the caller and into the store at
//     once, one hash per byte (teeReader);
//  4. resuming: a body cut short is asked for again from where it broke
//     (Range: bytes=N-), within the call, and a partial file left by a
//     cut or a killed process is resumed by the next download;
//  5. the commit, only when every byte hashed to the digest at the
//     expected size;
//  6. the degrade: a cache that cannot be written (read-only, full)
//     serves the download uncached, with one warning per kind.
//
// Manifests and configs, which are read whole, take the same lock and
// re-check in smallBlob, and are checked against their digest in memory.

// source opens the bytes of a blob from offset on: the registry, or the
// layer a Cache adapter wraps. start is where body begins in the blob:
// offset when the source honoured it, 0 when it sends the whole blob (a
// source that cannot resume, or a registry that answers a Range request
// with 200). total is the blob's size as the answer tells it, or -1. raw
// reports that nothing else verifies body, so the fetch step must (it
// always does when it can store the blob).
type source func(ctx context.Context, offset int64) (body io.ReadCloser, start, total int64, raw bool, err error)

// maxStalls bounds how many times in a row one fetch asks again for a
// body that was cut without bringing a byte since the last time: a
// connection that breaks before any progress is an outage, and the error
// is the caller's. maxResumes bounds the resumes of one fetch in all, so
// that a registry that cuts every response after a few bytes ends too.
const (
	maxStalls  = 5
	maxResumes = 64
)

// fetchStep is one blob's miss path.
type fetchStep struct {
	s    *store.Store
	d    digest.Digest
	size int64  // expected size, or -1
	from string // where the bytes come from, for errors
	src  source
	// nextHost, if set, passes over the source's host, whose bytes were
	// wrong, for the next one; false when there is none.
	nextHost func() bool
	// drain says the caller only wants the blob stored (Warm): bytes it
	// was handed that a later answer contradicts are no error for it.
	drain bool
	// strict makes a cache that cannot store the blob an error (Warm),
	// instead of a download served uncached.
	strict bool

	hit, miss    func(n int64)                    // counting; may be nil
	noteReadErr  func(d digest.Digest, err error) // may be nil
	noteWriteErr func(d digest.Digest, err error) // may be nil
}

// open returns the blob's bytes: verified from the store on a hit (cached
// true), or streaming from the source into the store. The stream holds the
// blob's lock until it is closed, so that other goroutines and processes
// wait for this download instead of starting their own.
func (f *fetchStep) open(ctx context.Context) (rc io.ReadCloser, cached bool, err error) {
	if rc, ok := f.openCached(ctx); ok {
		return rc, true, nil
	}
	unlock, lerr := f.s.LockBlob(ctx, f.d)
	if unlock == nil {
		return nil, false, fmt.Errorf("blob %s: %w", f.d, lerr)
	}
	if lerr != nil {
		if f.strict {
			unlock()
			return nil, false, fmt.Errorf("blob %s: %w", f.d, lerr)
		}
		f.writeErr(lerr)
	}
	if rc, ok := f.openCached(ctx); ok {
		unlock()
		return rc, true, nil
	}
	t := &teeReader{f: f, ctx: ctx, size: f.size, unlock: unlock}
	if lerr == nil {
		if t.w, err = f.s.OpenPartial(ctx, f.d, f.size); err != nil {
			if f.strict {
				unlock()
				return nil, false, err
			}
			f.writeErr(err)
			t.w = nil
		}
	}
	var offset int64
	if t.w != nil {
		offset = t.w.Resumed()
	}
	if err := t.connect(offset); err != nil {
		t.finish()
		return nil, false, err
	}
	if f.drain && t.w != nil && t.fromDisk {
		// A caller that only stores the blob (Warm) is not handed the
		// bytes of the partial file that a saved hash state covers: the
		// store checks them beside the download, and the download goes
		// on at once. They count as delivered, so that a download that
		// starts again from zero does not hand them out either.
		k := t.w.SkipChecked()
		t.n += k
		t.delivered += k
	}
	return t, false, nil
}

func (f *fetchStep) openCached(ctx context.Context) (io.ReadCloser, bool) {
	rc, info, err := f.s.OpenVerified(ctx, f.d)
	if err != nil {
		if f.noteReadErr != nil {
			f.noteReadErr(f.d, err)
		}
		return nil, false
	}
	if f.hit != nil {
		f.hit(info.Size)
	}
	return rc, true
}

func (f *fetchStep) writeErr(err error) {
	if f.noteWriteErr != nil {
		f.noteWriteErr(f.d, err)
	}
}

// subject names the blob, and its source, in errors.
func (f *fetchStep) subject() string {
	if f.from == "" {
		return "blob " + f.d.String()
	}
	return "blob " + f.d.String() + " from " + f.from
}

// cut reports whether a body's read error means the connection broke, so
// that the rest may be asked for again: the body ended early, or the
// connection was reset or timed out. The caller's own context ending is
// not a cut.
func cut(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var opErr *net.OpError
	var netErr net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &opErr) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		(errors.As(err, &netErr) && netErr.Timeout())
}

// rangeFrom is the Range header of a GET of a blob of size bytes (or -1)
// from offset on. The last byte is named when it is known: some registries
// (ggcr's own) understand no open-ended range.
func rangeFrom(offset, size int64) string {
	if size > offset {
		return fmt.Sprintf("bytes=%d-%d", offset, size-1)
	}
	return fmt.Sprintf("bytes=%d-", offset)
}

// rangeStart reads where the body of resp begins in the blob, for a GET
// sent from offset: 0 for a 200, and for a 206 where its Content-Range
// says, which must be offset or 0 (a server that sent the blob from its
// start, which restarts the download with no new request). ok is false
// for a 206 that starts anywhere else: the caller asks again from zero.
// total is the blob's size as the answer gives it, or -1.
func rangeStart(resp *http.Response, offset int64) (start, total int64, ok bool) {
	if resp.StatusCode == http.StatusOK {
		return 0, resp.ContentLength, true
	}
	// Content-Range: bytes START-END/TOTAL (TOTAL may be *).
	spec, found := strings.CutPrefix(resp.Header.Get("Content-Range"), "bytes ")
	span, size, _ := strings.Cut(spec, "/")
	first, _, _ := strings.Cut(span, "-")
	s, err := strconv.ParseInt(first, 10, 64)
	if !found || err != nil || (s != offset && s != 0) {
		return 0, -1, false
	}
	total = -1
	if t, err := strconv.ParseInt(size, 10, 64); err == nil {
		total = t
	} else if resp.ContentLength >= 0 {
		total = s + resp.ContentLength
	}
	return s, total, true
}
