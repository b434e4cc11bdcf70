package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// blob serves GET and HEAD of a blob.
//
// The download of a miss is not the request's: its context is detached
// from the request once remotecache.Blob returned (until then a client
// that goes away stops the wait for the blob's lock too), and Shutdown
// cancels it. Whatever the client does, the rest of a miss is read into
// the store in the background (finish), so a client that disconnects, a
// Range, and a HEAD all leave the whole blob cached, or, if the download
// fails or is cancelled, nothing committed.
func (h *Handler) blob(w *logWriter, r *http.Request, repo name.Repository, d digest.Digest) {
	if r.Method == http.MethodHead {
		// A HEAD of a cached blob needs its size only; a GET verifies.
		if info, err := h.s.Stat(r.Context(), d); err == nil {
			w.cache = "hit"
			blobHeaders(w, d, info.Size)
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	ctx, cancel := context.WithCancel(h.bg)
	stop := context.AfterFunc(r.Context(), cancel)
	var c remotecache.Counters
	// Not v1.NewHash, which knows only sha256: d is valid for the store,
	// which keeps sha512 too.
	hash := v1.Hash{Algorithm: string(d.Algorithm()), Hex: d.Encoded()}
	rc, size, err := remotecache.Blob(ctx, repo, hash, h.s, h.pullOptions(repo, &c)...)
	stop()
	if err != nil {
		cancel()
		w.cache = "miss"
		writeError(w, r, h.pullError(err, codeBlobUnknown, "blob "+d.String()))
		return
	}
	hit := c.Cached().Blobs > 0
	w.cache = "miss"
	if hit {
		w.cache = "hit"
	}
	// finish ends the blob's stream once the response is written (or
	// abandoned): a hit is closed; a miss is read to its end into the
	// store, in the background.
	finish := func() {
		if hit {
			rc.Close()
			cancel()
			return
		}
		h.background(func() {
			defer cancel()
			defer rc.Close()
			io.Copy(io.Discard, rc)
		})
	}
	defer finish()

	start, n, status, aerr := byteRange(r.Header.Get("Range"), size)
	if aerr != nil {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		writeError(w, r, aerr)
		return
	}
	blobHeaders(w, d, size)
	if status == http.StatusPartialContent {
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+n-1, size))
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	if hit {
		h.sendHit(w, r, rc, d, start, n, size, status)
		return
	}
	// The blob's bytes before the range are read, not skipped: a miss
	// must hash them.
	if start > 0 {
		if _, err := io.CopyN(io.Discard, rc, start); err != nil {
			writeError(w, r, h.pullError(err, codeBlobUnknown, "blob "+d.String()))
			return
		}
	}
	w.WriteHeader(status)
	// Read, never WriteTo: the fetch step abandons a download whose
	// WriteTo destination fails, and a client that goes away must leave
	// the rest to finish.
	cw := &clientWriter{w: w}
	src := io.Reader(struct{ io.Reader }{rc})
	if status == http.StatusPartialContent {
		src = io.LimitReader(src, n)
	}
	_, err = io.Copy(cw, src)
	if err != nil && cw.err == nil {
		// The blob failed (wrong bytes, an upstream that broke off):
		// the response must not end as if it were whole.
		h.o.AccessLog.Warn("blob failed mid-response", "digest", d, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// sendHit sends bytes start to start+n of a blob the store verified
// whole before Blob returned: rc is the store's reader of the file
// (store.VerifyFirst), which seeks to the range's start, and whose
// WriteTo hands the file to the response's ReadFrom, so that the kernel
// copies it to the connection (sendfile) instead of the process reading
// it once more. The copy's errors are the connection's, but for a file
// that shrank since it was hashed (store.ErrCorrupted), which aborts the
// response; either way a response cut short is never taken for whole,
// since it is shorter than its Content-Length.
func (h *Handler) sendHit(w *logWriter, r *http.Request, rc io.Reader, d digest.Digest, start, n, size int64, status int) {
	if start > 0 {
		var err error
		if sk, ok := rc.(io.Seeker); ok {
			_, err = sk.Seek(start, io.SeekStart)
		} else {
			_, err = io.CopyN(io.Discard, rc, start)
		}
		if err != nil {
			writeError(w, r, h.pullError(err, codeBlobUnknown, "blob "+d.String()))
			return
		}
	}
	w.WriteHeader(status)
	src := rc
	if start+n < size {
		// A range that ends before the blob does: no sendfile, whose
		// reader must be the file itself (or a limit of it).
		src = io.LimitReader(rc, n)
	}
	if _, err := io.Copy(w, src); errors.Is(err, store.ErrCorrupted) {
		h.o.AccessLog.Warn("blob failed mid-response", "digest", d, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// blobHeaders sets the headers of a blob's answer; size -1 (the upstream
// did not say) sends the body chunked.
func blobHeaders(w http.ResponseWriter, d digest.Digest, size int64) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", d.String())
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.Header().Set("Accept-Ranges", "bytes")
	}
}

// byteRange reads a Range header against a blob of size bytes: a single
// range is answered 206 with its first byte and length; no header, a
// header that does not parse, several ranges, or an unknown size are
// answered 200 with the whole blob (RFC 9110 lets a server ignore Range).
// A range that starts past the end is a 416.
func byteRange(header string, size int64) (start, n int64, status int, aerr *apiError) {
	spec, ok := strings.CutPrefix(header, "bytes=")
	if !ok || size < 0 || strings.Contains(spec, ",") {
		return 0, size, http.StatusOK, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, size, http.StatusOK, nil
	}
	unsatisfiable := &apiError{http.StatusRequestedRangeNotSatisfiable, codeSizeInvalid,
		fmt.Sprintf("range %q not satisfiable: the blob has %d bytes", header, size)}
	if first == "" {
		// bytes=-N: the last N bytes.
		k, err := strconv.ParseInt(last, 10, 64)
		if err != nil || k < 0 {
			return 0, size, http.StatusOK, nil
		}
		if k == 0 || size == 0 {
			return 0, 0, 0, unsatisfiable
		}
		k = min(k, size)
		return size - k, k, http.StatusPartialContent, nil
	}
	s, err := strconv.ParseInt(first, 10, 64)
	if err != nil || s < 0 {
		return 0, size, http.StatusOK, nil
	}
	e := size - 1
	if last != "" {
		if e, err = strconv.ParseInt(last, 10, 64); err != nil || e < s {
			return 0, size, http.StatusOK, nil
		}
		e = min(e, size-1)
	}
	if s >= size {
		return 0, 0, 0, unsatisfiable
	}
	return s, e - s + 1, http.StatusPartialContent, nil
}

// clientWriter writes to the client and keeps its error apart from the
// blob's: once the client fails, the copy stops and finish reads the rest
// into the store.
type clientWriter struct {
	w   io.Writer
	err error
}

func (c *clientWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	if err != nil {
		c.err = fmt.Errorf("%w: %w", errClientGone, err)
		return n, c.err
	}
	return n, nil
}
