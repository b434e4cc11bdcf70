package remotecache

import (
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

// teeReader streams a download to its caller and into a store Writer at
// once: the pull path's misses, the Cache adapter's Put layers and the
// Transport's blob misses all go through it. It commits the blob when the
// stream ends cleanly and the bytes matched; anything else (an error, a
// short body, a caller that closes early) abandons the temp file. The
// Writer's hash is the only one over a raw body; when there is no Writer
// (a read-only cache) and nothing else verifies the body, v is.
type teeReader struct {
	d    digest.Digest
	from string // where the bytes come from, for errors; "" if unsaid
	size int64  // expected size, or -1
	src  io.ReadCloser
	w    *store.Writer   // nil if the cache cannot be written
	v    digest.Verifier // set when w is nil and the body is raw

	noteWriteErr func(digest.Digest, error) // told once if storing fails; may be nil
	fetched      func(n int64)              // told at a clean, matching end; may be nil
	unlock       func()                     // released when the stream ends; may be nil

	n      int64
	werr   bool  // storing failed; w only hashes now
	done   bool  // committed or abandoned
	failed error // the bytes were wrong: every later Read returns it
}

// subject names the blob, and its source, in errors.
func (t *teeReader) subject() string {
	if t.from == "" {
		return "blob " + t.d.String()
	}
	return "blob " + t.d.String() + " from " + t.from
}

func (t *teeReader) Read(b []byte) (int, error) {
	if t.failed != nil {
		return 0, t.failed
	}
	if t.size >= 0 && !t.done {
		// Never hand the caller a byte past the expected size: a body
		// that runs longer is wrong, and its extra bytes (a tampered
		// tar's, say) must not reach a consumer before the error does.
		rem := t.size - t.n
		if rem == 0 {
			var one [1]byte
			n, err := t.src.Read(one[:])
			if n > 0 {
				t.finish()
				t.failed = t.overflow()
				return 0, t.failed
			}
			if err == nil {
				return 0, nil
			}
			return t.after(b[:0], err)
		}
		if int64(len(b)) > rem {
			b = b[:rem]
		}
	}
	n, err := t.src.Read(b)
	return t.after(b[:n], err)
}

// after takes the bytes b of a read, and its error, through the store
// and the checks.
func (t *teeReader) after(b []byte, err error) (int, error) {
	n := len(b)
	t.n += int64(n)
	if n > 0 {
		switch {
		case t.w != nil:
			if _, werr := t.w.Write(b[:n]); werr != nil {
				if errors.Is(werr, store.ErrDigestMismatch) {
					t.finish()
					t.failed = t.overflow()
					return 0, t.failed
				}
				t.storeFailed(werr)
			}
		case t.v != nil:
			t.v.Write(b[:n])
		}
	}
	if err == io.EOF {
		if verr := t.end(); verr != nil {
			return n, verr
		}
	} else if err != nil {
		t.finish()
		// A cut connection says only "unexpected EOF": name the blob.
		err = fmt.Errorf("%s: %w", t.subject(), err)
	}
	return n, err
}

// WriteTo streams the rest of the download to dst and into the store
// with no copy in between: the Writer reads from the body straight into
// the buffers its file is written from, and dst is given each piece as it
// arrives (passTo), before it is hashed. Callers that io.Copy a layer get
// this path. Anything it cannot do that way (no Writer, or one that failed
// to write its file) goes on through Read.
func (t *teeReader) WriteTo(dst io.Writer) (int64, error) {
	var total int64
	if t.w != nil && !t.werr && !t.done {
		pt := &passTo{r: t.src, w: dst, max: -1}
		if t.size >= 0 {
			pt.max = t.size - t.n
		}
		n, err := t.w.ReadFrom(pt)
		t.n += n
		total = pt.written
		// The checks go from the caller's own error to the blob's: a read
		// that ran past the expected size may also have brought io.EOF,
		// and its bytes, which the Writer refused to hash, went to dst.
		switch {
		case pt.werr != nil:
			t.finish()
			return total, pt.werr
		case errors.Is(err, store.ErrDigestMismatch):
			t.finish()
			t.failed = t.overflow()
			return total, t.failed
		case pt.rerr == io.EOF:
			return total, t.end()
		case pt.rerr != nil:
			t.finish()
			return total, fmt.Errorf("%s: %w", t.subject(), pt.rerr)
		case err != nil:
			// The temp file could not be written: serve the rest
			// uncached, still hashed by the Writer (see Read).
			t.storeFailed(err)
		}
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	n, err := io.CopyBuffer(dst, struct{ io.Reader }{t}, *bp)
	return total + n, err
}

// passTo is a reader of r that writes what it reads to w before it
// returns it, keeping r's and w's errors apart, and counting what w took.
// w is given no byte past the first max (when max >= 0): the reader's
// consumer, the store's Writer, knows the size too and refuses the rest.
type passTo struct {
	r       io.Reader
	w       io.Writer
	max     int64
	seen    int64
	written int64
	rerr    error
	werr    error
}

func (p *passTo) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	pass := n
	if p.max >= 0 {
		pass = int(min(int64(n), max(p.max-p.seen, 0)))
	}
	p.seen += int64(n)
	if pass > 0 {
		m, werr := p.w.Write(b[:pass])
		p.written += int64(m)
		if werr == nil && m < pass {
			werr = io.ErrShortWrite
		}
		if werr != nil {
			p.werr = werr
			return n, werr
		}
	}
	if err != nil {
		p.rerr = err
	}
	return n, err
}

// overflow is the error of a body longer than the expected size.
func (t *teeReader) overflow() error {
	return fmt.Errorf("%s: more than the expected %d bytes: %w", t.subject(), t.size, store.ErrDigestMismatch)
}

// storeFailed notes, once, that the blob cannot be stored; the stream
// goes on, hashed, uncached.
func (t *teeReader) storeFailed(err error) {
	if t.werr {
		return
	}
	t.werr = true
	if t.noteWriteErr != nil {
		t.noteWriteErr(t.d, err)
	}
}

// end checks a stream that reached EOF and commits it. An error means
// the bytes were wrong and the caller must not trust them.
func (t *teeReader) end() error {
	defer t.finish()
	wrong := func(got string) error {
		return fmt.Errorf("%s: %w: %d bytes hashing to %s", t.subject(), store.ErrDigestMismatch, t.n, got)
	}
	switch {
	case t.w != nil:
		if got := t.w.Digest(); got != t.d || (t.size >= 0 && t.n != t.size) {
			return wrong(got.String())
		}
		w := t.w
		t.w = nil
		if _, err := w.Commit(); err != nil {
			t.storeFailed(err)
		}
	case t.v != nil:
		if !t.v.Verified() || (t.size >= 0 && t.n != t.size) {
			return wrong("another digest")
		}
	}
	if t.fetched != nil {
		t.fetched(t.n)
	}
	return nil
}

// finish abandons any uncommitted write and releases the digest lock.
func (t *teeReader) finish() {
	if t.done {
		return
	}
	t.done = true
	if t.w != nil {
		t.w.Close()
		t.w = nil
	}
	if t.unlock != nil {
		t.unlock()
	}
}

// Close ends the stream. A caller that stops at the blob's last byte
// without reading on to EOF (ggcr's readers stop at the size the
// descriptor gives, and a chunked body has no other end) has read the
// whole blob when the bytes hash to d and have the expected size: it is
// committed then too. Anything else is abandoned.
func (t *teeReader) Close() error {
	if !t.done && t.failed == nil && t.w != nil && !t.werr && t.n > 0 &&
		(t.size < 0 || t.n == t.size) && t.w.Digest() == t.d {
		_ = t.end()
	}
	err := t.src.Close()
	t.finish()
	return err
}
