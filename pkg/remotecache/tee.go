package remotecache

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

// teeReader is the stream of a fetch step's download (see fetchstep.go):
// it hands the caller the blob's bytes and writes them into the store's
// partial file at once, and commits the blob when the stream ends cleanly
// and every byte hashed to its digest at the expected size.
//
// It reads, in order: the bytes a partial file resumed (hashed as they
// are served; those a saved hash state covers are hashed by the store
// beside the download instead, and a Warm skips them: see hashed and
// fetchStep.open), then the source's body. A body that breaks is asked for
// again from where it broke (connect); a source that answers from zero
// instead has its first bytes written to the store but not handed out
// again, and checked against what was (skip). A blob whose bytes turn out
// wrong after a resume from a partial file, which may have rotted on disk,
// is fetched once more from zero within the call.
//
// The Writer's hash is the only one over the bytes; when there is no
// Writer (a cache that cannot be written) and nothing else verifies the
// body, v is. No byte past the expected size reaches the caller.
type teeReader struct {
	f      *fetchStep
	ctx    context.Context
	size   int64         // expected size, or -1
	w      *store.Writer // nil if the cache cannot be written
	v      digest.Verifier
	unlock func() // released when the stream ends

	body io.ReadCloser
	raw  bool // nothing above verifies body

	n            int64 // bytes of the blob hashed (from zero)
	delivered    int64 // bytes handed to the caller
	resumes      int   // of this fetch, in all
	stalls       int   // resumes in a row that brought no byte
	lastResumeAt int64 // n at the last resume
	fromDisk     bool  // some bytes came from a partial file
	retried      bool  // fetched again from zero after a mismatch

	skip     int64         // bytes of the body the caller has already
	skipWant digest.Digest // what those bytes hashed to when handed out
	poisoned error         // the caller was handed bytes that were wrong

	werr   bool  // storing failed; w only hashes now
	serr   error // why storing failed
	done   bool  // committed or abandoned
	failed error // the bytes were wrong: every later Read returns it
}

// connect opens the source from offset, the bytes hashed so far.
func (t *teeReader) connect(offset int64) error {
	if t.body != nil {
		t.body.Close()
		t.body = nil
	}
	body, start, total, raw, err := t.f.src(t.ctx, offset)
	if err != nil {
		return err
	}
	t.body, t.raw = body, raw
	if t.w == nil && raw && t.v == nil {
		t.v = t.f.d.Verifier()
	}
	if t.size < 0 && total >= 0 {
		t.size = total
	}
	if start == offset {
		if offset > 0 && t.w != nil && t.w.Size() < offset {
			t.fromDisk = true // the prefix is served from the partial file
		}
		return nil
	}
	// The body starts at zero: what was hashed is dropped, and what the
	// caller has is checked against the new bytes as they pass.
	if t.w != nil {
		if t.w.Size() > 0 {
			t.skip, t.skipWant = t.w.Size(), t.hashed()
		}
		if err := t.w.Restart(); err != nil {
			t.storeFailed(err)
		}
	} else if t.delivered > 0 {
		// Nothing hashed what the caller has: it cannot be checked.
		return fmt.Errorf("%s: the source sent the blob from its start after a cut, and the bytes already served cannot be checked", t.f.subject())
	}
	if t.w == nil || t.werr {
		t.v = t.f.d.Verifier()
	}
	t.n = 0
	return nil
}

// resume asks the source for the rest of a body that broke with err, and
// reports whether the stream goes on.
func (t *teeReader) resume(err error) bool {
	if !t.raw || !cut(t.ctx, err) {
		return false
	}
	if t.n > t.lastResumeAt {
		t.stalls = 0 // the last answer brought bytes
	}
	if t.stalls >= maxStalls || t.resumes >= maxResumes {
		return false
	}
	t.resumes++
	t.stalls++
	t.lastResumeAt = t.n
	return t.connect(t.n) == nil
}

// allIn reports whether every expected byte was read, so that a cut after
// the last one is no more than the end of the body.
func (t *teeReader) allIn() bool { return t.size >= 0 && t.n == t.size }

func (t *teeReader) Read(b []byte) (int, error) {
	for {
		if t.failed != nil {
			return 0, t.failed
		}
		if t.done {
			return 0, io.EOF
		}
		switch {
		case t.w != nil && t.w.Size() < t.w.Resumed():
			// The bytes a partial file holds come first.
			return t.readPrefix(b)
		case t.skip > 0 || t.poisoned != nil:
			// Bytes the caller has already, from an answer that restarted.
			if err := t.skipAhead(b); err != nil {
				return 0, err
			}
		case t.allIn():
			if err := t.readPastEnd(); err != nil {
				return 0, err
			}
		default:
			if n, again, err := t.readBody(b); !again {
				return n, err
			}
		}
	}
}

// readPrefix reads the bytes of the partial file the download resumed.
func (t *teeReader) readPrefix(b []byte) (int, error) {
	if int64(len(b)) > t.w.Resumed()-t.w.Size() {
		b = b[:t.w.Resumed()-t.w.Size()]
	}
	n, err := t.w.Prefix().Read(b)
	t.n += int64(n)
	t.delivered += int64(n)
	if err != nil {
		return n, t.fail(fmt.Errorf("%s: reading its partial download: %w", t.f.subject(), err))
	}
	return n, nil
}

// readPastEnd reads on once every byte expected is in, for the body's
// EOF (then the blob ends, or starts again from zero) or for bytes too
// many. A nil error means read again.
func (t *teeReader) readPastEnd() error {
	var one [1]byte
	n, err := t.body.Read(one[:])
	if n > 0 {
		return t.fail(t.overflow())
	}
	if err == nil {
		return nil
	}
	if err != io.EOF && !cut(t.ctx, err) {
		return t.fail(fmt.Errorf("%s: %w", t.f.subject(), err))
	}
	if err := t.end(); err != nil || t.done {
		return t.endErr(err)
	}
	return nil // fetched again from zero
}

// readBody reads the next bytes of the body into b and the store; again
// reports that nothing is returned yet (the download resumed, or started
// again from zero) and Read must go on.
func (t *teeReader) readBody(b []byte) (n int, again bool, err error) {
	if t.size >= 0 && int64(len(b)) > t.size-t.n {
		b = b[:t.size-t.n]
	}
	n, err = t.body.Read(b)
	if n > 0 {
		if werr := t.take(b[:n]); werr != nil {
			return 0, false, werr
		}
		if t.allIn() && !t.matches() {
			// The blob's last bytes are held back when the whole is
			// wrong: a consumer that checks its own end (gzip's CRC,
			// a tar's last header) must get this error, not its own.
			if eerr := t.end(); eerr != nil || t.done {
				return 0, false, t.endErr(eerr)
			}
			return 0, true, nil // started again from zero (see end)
		}
		t.delivered += int64(n)
	}
	switch {
	case err == io.EOF, err != nil && t.allIn() && cut(t.ctx, err):
		if eerr := t.end(); eerr != nil || t.done {
			return n, false, t.endErr(eerr)
		}
	case err != nil:
		if !t.resume(err) {
			// A cut connection says only "unexpected EOF": name the blob.
			return n, false, t.fail(fmt.Errorf("%s: %w", t.f.subject(), err))
		}
	}
	return n, n == 0, nil
}

// matches reports whether the bytes hashed so far are the blob: always
// true for a body that something above verifies (ggcr's reader).
func (t *teeReader) matches() bool {
	switch {
	case t.w != nil:
		return t.hashed() == t.f.d
	case t.v != nil:
		return t.v.Verified()
	}
	return true
}

// hashed is the digest of the bytes the Writer hashed, or "" when it
// resumed from a saved hash state that the bytes on disk did not reach
// (store.Writer.PrefixCheck, which waits for that check to end): those
// bytes, the caller's too, are then of no known digest.
func (t *teeReader) hashed() digest.Digest {
	if t.w.PrefixCheck() != nil {
		return ""
	}
	return t.w.Digest()
}

// take writes b, just read from the body, to the store (or the verifier).
func (t *teeReader) take(b []byte) error {
	t.n += int64(len(b))
	switch {
	case t.w != nil:
		if _, werr := t.w.Write(b); werr != nil {
			if errors.Is(werr, store.ErrDigestMismatch) {
				return t.fail(t.overflow())
			}
			t.storeFailed(werr)
		}
	case t.v != nil:
		t.v.Write(b)
	}
	return nil
}

// skipAhead reads bytes of the body that the caller was handed already
// (or, once poisoned, every byte left) into the store only, using b as
// scratch, and checks them against what was handed out.
func (t *teeReader) skipAhead(b []byte) error {
	if t.skip > 0 && int64(len(b)) > t.skip {
		b = b[:t.skip]
	}
	n, err := t.body.Read(b)
	if n > 0 {
		if werr := t.take(b[:n]); werr != nil {
			return werr
		}
		if t.skip > 0 {
			t.skip -= int64(n)
			if t.skip == 0 && (t.w == nil || t.w.Digest() != t.skipWant) && !t.f.drain {
				// The caller has bytes that are not the blob's: it
				// gets an error, and the store gets the blob.
				t.poisoned = fmt.Errorf("%s: %w: the bytes served before the download was started again were wrong",
					t.f.subject(), store.ErrDigestMismatch)
			}
		}
	}
	switch {
	case err == io.EOF, err != nil && t.allIn() && cut(t.ctx, err):
		if eerr := t.end(); eerr != nil {
			return t.fail(eerr)
		}
		if t.done {
			return t.fail(t.poisoned) // poisoned, or the blob ended where the caller had it already
		}
	case err != nil:
		if !t.resume(err) {
			return t.fail(fmt.Errorf("%s: %w", t.f.subject(), err))
		}
	}
	return nil
}

// endErr is the error a Read returns once the stream ended: io.EOF, or
// what made it fail.
func (t *teeReader) endErr(err error) error {
	if err != nil {
		return t.fail(err)
	}
	if t.poisoned != nil {
		return t.fail(t.poisoned)
	}
	return io.EOF
}

// WriteTo streams the rest of the download to dst. While the body brings
// new bytes and the store can take them, the Writer reads the body
// straight into the buffers its file is written from, and dst is given
// each piece as it arrives (passTo), so that no byte is copied in
// between; callers that io.Copy a layer get this path. Everything else (a
// resumed prefix, bytes to skip, no Writer) goes through Read.
func (t *teeReader) WriteTo(dst io.Writer) (int64, error) {
	var total int64
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	for {
		if t.failed != nil {
			return total, t.failed
		}
		if t.done {
			return total, nil
		}
		var n int64
		var stop bool
		var err error
		if t.direct() {
			n, stop, err = t.passOn(dst)
		} else {
			n, stop, err = t.copyOne(dst, *bp)
		}
		total += n
		if stop {
			return total, err
		}
	}
}

// direct reports whether the body's next bytes can go straight into the
// Writer's buffers (passOn): nothing to take from a partial file or to
// skip, and a Writer that still takes bytes.
func (t *teeReader) direct() bool {
	return t.w != nil && !t.werr && t.w.Size() >= t.w.Resumed() && t.skip == 0 && t.poisoned == nil &&
		(t.size < 0 || t.n < t.size)
}

// copyOne hands dst what one Read gives; stop reports that WriteTo
// returns, with err.
func (t *teeReader) copyOne(dst io.Writer, buf []byte) (n int64, stop bool, err error) {
	m, err := t.Read(buf)
	if m > 0 {
		w, werr := dst.Write(buf[:m])
		n = int64(w)
		if werr != nil {
			t.finish()
			return n, true, werr
		}
	}
	if err == io.EOF {
		return n, true, nil
	}
	return n, err != nil, err
}

// passOn lets the Writer read the body into its own buffers, handing dst
// each piece on the way (passTo), until the body ends, breaks or brings
// too much; stop reports that WriteTo returns, with err.
func (t *teeReader) passOn(dst io.Writer) (n int64, stop bool, err error) {
	pt := &passTo{r: t.body, w: dst, max: -1}
	if t.size >= 0 {
		pt.max = t.size - t.n
	}
	read, err := t.w.ReadFrom(pt)
	t.n += read
	t.delivered += pt.written
	n = pt.written
	// The checks go from the caller's own error to the blob's: a read
	// that ran past the expected size may also have brought io.EOF, and
	// its bytes, which the Writer refused to hash, went no further than
	// the expected size.
	switch {
	case pt.werr != nil:
		t.finish()
		return n, true, pt.werr
	case errors.Is(err, store.ErrDigestMismatch):
		return n, true, t.fail(t.overflow())
	case pt.rerr == io.EOF, pt.rerr != nil && t.allIn() && cut(t.ctx, pt.rerr):
		if eerr := t.end(); eerr != nil || t.done {
			if eerr == nil {
				eerr = t.poisoned
			}
			if eerr != nil {
				return n, true, t.fail(eerr)
			}
			return n, true, nil
		}
	case pt.rerr != nil:
		if !t.resume(pt.rerr) {
			return n, true, t.fail(fmt.Errorf("%s: %w", t.f.subject(), pt.rerr))
		}
	case err != nil:
		// The partial file could not be written: serve the rest
		// uncached, still hashed by the Writer (see Read).
		t.storeFailed(err)
	}
	return n, false, nil
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
	return fmt.Errorf("%s: more than the expected %d bytes: %w", t.f.subject(), t.size, store.ErrDigestMismatch)
}

// storeFailed notes, once, that the blob cannot be stored; the stream
// goes on, hashed, uncached.
func (t *teeReader) storeFailed(err error) {
	if t.werr {
		return
	}
	t.werr, t.serr = true, err
	t.f.writeErr(err)
}

// fail ends the stream with err, which every later Read returns, and
// keeps the partial file for a later resume unless its bytes were wrong.
func (t *teeReader) fail(err error) error {
	t.failed = err
	// Wrong bytes are no prefix to resume from; nor is what a verifying
	// reader above the source (ggcr's) refused, or served before it did.
	if (errors.Is(err, store.ErrDigestMismatch) || !t.raw) && t.w != nil {
		t.w.Discard()
		t.w = nil
	}
	t.finish()
	return err
}

// end checks a stream whose body reached EOF and commits it. An error
// means the bytes were wrong and the caller must not trust them. When the
// bytes were wrong after a resume from a partial file, which may have
// rotted on disk, end starts the download again from zero instead
// (done stays false; the caller reads on).
func (t *teeReader) end() error {
	wrong := func(got string) error {
		return fmt.Errorf("%s: %w: %d bytes hashing to %s", t.f.subject(), store.ErrDigestMismatch, t.n, got)
	}
	var got digest.Digest
	switch {
	case t.w != nil:
		got = t.hashed()
	case t.v != nil:
		if t.v.Verified() {
			got = t.f.d
		}
	default:
		got = t.f.d // verified above us (ggcr's reader)
	}
	if got != t.f.d || (t.size >= 0 && t.n != t.size) {
		// Bytes resumed from a partial file may have rotted on disk, and
		// a mirror may serve wrong ones: either way the blob is fetched
		// again from zero, from the upstream in the second case.
		again := t.raw && t.w != nil && !t.retried && t.fromDisk
		if !again && t.raw && t.f.nextHost != nil && t.f.nextHost() {
			again = true
		}
		if again && t.restartFromZero(got) {
			return nil
		}
		if got == "" {
			return wrong("another digest")
		}
		return wrong(got.String())
	}
	if t.w != nil && !t.werr {
		w := t.w
		t.w = nil
		if _, err := w.Commit(); err != nil {
			// A file that could not be written whole (a full disk
			// reports it only here) is no prefix to resume from, and
			// must not keep the room a later write needs.
			w.Discard()
			t.storeFailed(err)
		}
	}
	if t.f.strict && t.serr != nil {
		return fmt.Errorf("%s: %w", t.f.subject(), t.serr)
	}
	if t.f.miss != nil {
		t.f.miss(t.n)
	}
	t.finish()
	return nil
}

// restartFromZero starts the download again from the blob's first byte
// after the bytes hashed to got, not the digest: the store gets the new
// bytes, and the caller, who has the old ones, gets no byte twice; its
// bytes are checked against the new as they pass (skip). It reports
// whether the new download started.
func (t *teeReader) restartFromZero(got digest.Digest) bool {
	t.retried, t.fromDisk = true, false
	if t.w != nil {
		if err := t.w.Restart(); err != nil {
			t.storeFailed(err)
		}
	} else {
		t.v = t.f.d.Verifier()
	}
	t.n = 0
	if err := t.connect(0); err != nil {
		return false
	}
	t.skip, t.skipWant = t.delivered, got
	return true
}

// finish abandons any uncommitted write (keeping the partial file) and
// releases the blob's lock.
func (t *teeReader) finish() {
	if t.done {
		return
	}
	t.done = true
	if t.w != nil {
		if (t.w.Size() == 0 && t.w.Resumed() == 0) || t.werr {
			// Nothing to resume from; or a file that could not be
			// written (a full disk), whose bytes must not stay to
			// take the room a later write needs.
			t.w.Discard()
		} else {
			t.w.Close()
		}
		t.w = nil
	}
	if t.body != nil {
		t.body.Close()
		t.body = nil
	}
	if t.unlock != nil {
		t.unlock()
	}
}

// Close ends the stream. A caller that stops at the blob's last byte
// without reading on to EOF (ggcr's readers stop at the size the
// descriptor gives, and a chunked body has no other end) has read the
// whole blob when the bytes hash to its digest and have the expected
// size: it is committed then too. Anything else is abandoned, and its
// bytes kept for a later download to resume.
func (t *teeReader) Close() error {
	if !t.done && t.failed == nil && t.poisoned == nil && t.skip == 0 && t.w != nil && !t.werr && t.n > 0 &&
		t.w.Size() >= t.w.Resumed() && (t.size < 0 || t.n == t.size) && t.hashed() == t.f.d {
		_ = t.end()
	}
	t.finish()
	return nil
}
