package store

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/internal/faultpoint"
	"github.com/ocibuild/layercache/internal/fsutil"
	"github.com/ocibuild/layercache/internal/layoutfs"
)

// Put stores the data read from r and returns its sha256 digest, computed
// from the data and never taken from the caller. It streams: memory does not
// grow with the blob. Storing bytes that are already stored succeeds.
func (s *Store) Put(ctx context.Context, r io.Reader) (d digest.Digest, err error) {
	defer diskerr.MarkAt(&err)
	w, err := s.NewWriter(ctx, "", -1)
	if err != nil {
		return "", err
	}
	defer w.Close()
	if err := copyCtx(ctx, w, r); err != nil {
		return "", err
	}
	return w.Commit()
}

// PutVerified stores the data read from r as the blob d. The data must hash
// to d and, unless size is -1, be size bytes long; otherwise it returns an
// error wrapping ErrDigestMismatch and commits nothing. If the store already
// holds a blob named d of that size, PutVerified returns at once without
// reading r.
func (s *Store) PutVerified(ctx context.Context, d digest.Digest, size int64, r io.Reader) (err error) {
	defer diskerr.MarkAt(&err)
	if err := layoutfs.Validate(d); err != nil {
		return err
	}
	if size >= 0 {
		if info, err := s.Stat(ctx, d); err == nil && info.Size == size {
			return nil
		}
	}
	w, err := s.NewWriter(ctx, d, size)
	if err != nil {
		return err
	}
	defer w.Close()
	if err := copyCtx(ctx, w, r); err != nil {
		return err
	}
	_, err = w.Commit()
	return err
}

// copyCtx copies r into w with the store's large buffer, checking ctx
// between reads so that a cancelled Put stops promptly.
func copyCtx(ctx context.Context, w io.Writer, r io.Reader) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Writer writes one blob into the store: bytes go to a temp file in ingest/
// and through a hash; Commit publishes the file at its final name only if
// the hash (and size) match. Use it where the bytes pass through anyway,
// such as a download that is also streamed to a caller, so that each byte
// is hashed once. A Writer is not safe for concurrent use.
type Writer struct {
	s        *Store
	ctx      context.Context
	f        *os.File
	out      *pipeFile // writes to f from its own goroutine
	h        hash.Hash
	alg      digest.Algorithm
	expected digest.Digest
	size     int64
	n        int64
	err      error // sticky write error
	done     bool

	partial bool  // the file is the blob's partial download (OpenPartial)
	resumed int64 // bytes the partial file held when opened

	// Hash states of a partial download (hashstate.go).
	hashFrom  int64        // Prefix hashes no byte before this: a restored state covers them
	check     *prefixCheck // the check of the bytes before hashFrom, or nil
	every     int64        // bytes between saves of the state; 0: none
	savedAt   int64        // offset of the state saved (or due) last
	pending   []byte       // a state due for saving once the file holds pendingAt bytes
	pendingAt int64
	committed bool // renamed to its final name: nothing is left to save
	dropping  bool // being discarded: nothing is left to save

	prefixHashed    int64         // bytes of the resumed file hashed by Prefix
	prefixHashedCtr *atomic.Int64 // testhook.PrefixHashed, or nil
}

// NewWriter starts writing a blob. expected is the digest the data must
// have, or "" to compute a sha256 digest from the data; size is the
// expected length, or -1 if unknown. The caller must call Commit or Close.
func (s *Store) NewWriter(ctx context.Context, expected digest.Digest, size int64) (w *Writer, err error) {
	defer diskerr.MarkAt(&err)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	alg := digest.SHA256
	if expected != "" {
		if err := layoutfs.Validate(expected); err != nil {
			return nil, err
		}
		alg = expected.Algorithm()
	}
	f, err := s.path.CreateTemp("blob-*")
	if err != nil {
		if expected != "" {
			return nil, fmt.Errorf("blob %s: %w", expected, err)
		}
		return nil, err
	}
	return &Writer{s: s, ctx: ctx, f: f, out: newPipeFile(f), h: alg.Hash(), alg: alg, expected: expected, size: size}, nil
}

// Write writes p to the temp file and the hash. Writing more than the
// expected size fails at once with ErrDigestMismatch.
//
// Once writing the file failed (a full disk, say), Write keeps hashing
// what it is given and returns that error every time: Commit will fail,
// but Digest still tells a caller that streams the same bytes elsewhere
// whether they were right, with no second hash.
func (w *Writer) Write(p []byte) (n int, err error) {
	defer diskerr.MarkAt(&err)
	if w.done {
		return 0, errors.New("write to a committed or closed blob writer")
	}
	if w.n < w.resumed {
		return 0, errors.New("write to a resumed blob writer before its prefix was read")
	}
	if w.size >= 0 && w.n+int64(len(p)) > w.size {
		w.err = w.overflow()
		return 0, w.err
	}
	if w.err != nil {
		w.h.Write(p)
		w.n += int64(len(p))
		return len(p), w.err
	}
	// The file write happens in the pipe's goroutine, overlapping the
	// hash below; its error surfaces on a later Write or in Commit.
	err = w.out.Write(p)
	w.h.Write(p)
	w.n += int64(len(p))
	faultpoint.HitBytes("blob:bytes", w.n)
	if err != nil {
		w.err = w.writeError(err)
		return len(p), w.err
	}
	if w.every > 0 {
		w.saveHashState()
	}
	return len(p), nil
}

// ReadFrom writes what r returns, until io.EOF, into the blob, as Write
// would, but reads straight into the buffers that the file is written
// from, so that no byte is copied in between. A caller that must also
// pass the bytes on can give it a reader that does so as it reads (an
// io.TeeReader): that is how a download is streamed to its caller and
// into the store with one copy out of the socket and one hash.
//
// It returns at the first error: r's, ErrDigestMismatch when r returns
// more than the expected size, or an earlier failure to write the temp
// file. The bytes counted in its result were hashed, as Write's are; after
// a write error, go on with Write, which keeps hashing.
func (w *Writer) ReadFrom(r io.Reader) (n int64, err error) {
	defer diskerr.MarkAt(&err)
	if w.done {
		return 0, errors.New("write to a committed or closed blob writer")
	}
	if w.n < w.resumed {
		return 0, errors.New("write to a resumed blob writer before its prefix was read")
	}
	var total int64
	for {
		if w.err == nil {
			if err := w.out.failed(); err != nil {
				w.err = w.writeError(err)
			}
		}
		if w.err != nil {
			return total, w.err
		}
		b := w.out.spare()
		n, rerr := r.Read(b[len(b):cap(b)])
		if w.size >= 0 && w.n+int64(n) > w.size {
			w.out.filled(b)
			w.err = w.overflow()
			return total, w.err
		}
		w.h.Write(b[len(b) : len(b)+n])
		w.n += int64(n)
		total += int64(n)
		w.out.filled(b[:len(b)+n])
		if n > 0 {
			faultpoint.HitBytes("blob:bytes", w.n)
			if w.every > 0 {
				w.saveHashState()
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// overflow is the error of bytes past the expected size.
func (w *Writer) overflow() error {
	return fmt.Errorf("blob %s: %w: more than the expected %d bytes", w.expected, ErrDigestMismatch, w.size)
}

// writeError wraps an error of writing the temp file, marked with
// ErrReadOnly or ErrNoSpace where it is one of those.
func (w *Writer) writeError(err error) error {
	// err is an *os.PathError: it names the temp file already.
	if errors.Is(diskerr.Mark(err), ErrNoSpace) {
		// Say it in words: EFBIG (a file size limit) reads "file too
		// large", which does not tell a user what to free.
		return diskerr.Mark(fmt.Errorf("writing blob: disk full: %w", err))
	}
	return diskerr.Mark(fmt.Errorf("writing blob: %w", err))
}

// Size returns how many bytes were written so far.
func (w *Writer) Size() int64 { return w.n }

// Digest returns the digest of the bytes written so far. For a partial
// Writer that resumed from a saved hash state, it relies on that state
// until PrefixCheck has returned nil.
func (w *Writer) Digest() digest.Digest { return digest.NewDigest(w.alg, w.h) }

// Commit publishes the blob if its bytes hashed to the expected digest and
// had the expected size, and returns its digest. It always closes the
// writer, even on error; on error nothing is published and the temp file
// is removed.
func (w *Writer) Commit() (d digest.Digest, err error) {
	defer diskerr.MarkAt(&err)
	if w.done {
		return "", errors.New("commit of a committed or closed blob writer")
	}
	defer w.Close()
	if err := w.out.wait(); err != nil && w.err == nil {
		w.err = w.writeError(err)
	}
	faultpoint.Hit("blob:temp-written")
	if w.err != nil {
		return "", w.err
	}
	// A hash resumed from a saved state vouches for the bytes before its
	// offset only once they were hashed again from disk and reached that
	// state: until then nothing is published.
	if err := w.PrefixCheck(); err != nil {
		if w.partial && errors.Is(err, ErrDigestMismatch) {
			w.Discard() // wrong bytes are no prefix to resume from
		}
		return "", err
	}
	got := w.Digest()
	name := w.expected
	if name == "" {
		name = got
	}
	if got != name || (w.size >= 0 && w.n != w.size) {
		if w.partial {
			// Wrong bytes are no prefix to resume from.
			w.Discard()
		}
		return "", fmt.Errorf("blob %s: %w: got %d bytes hashing to %s", name, ErrDigestMismatch, w.n, got)
	}
	if err := w.ctx.Err(); err != nil {
		return "", err
	}
	final, err := w.s.blobPath(name)
	if err != nil {
		return "", err
	}
	if w.s.durable {
		if err := w.f.Sync(); err != nil {
			return "", fmt.Errorf("blob %s: syncing %s: %w", name, w.f.Name(), err)
		}
	}
	faultpoint.Hit("blob:synced")
	// Not fsynced by default, and that is safe: every read verifies, so a
	// blob torn by a power loss is detected and fetched again.
	if err := w.f.Close(); err != nil {
		return "", fmt.Errorf("blob %s: closing %s: %w", name, w.f.Name(), err)
	}
	tmp := w.f.Name()
	// Blobs are immutable: read-only files say so to people with editors.
	if err := os.Chmod(tmp, 0o444); err != nil {
		return "", fmt.Errorf("blob %s: %w", name, err)
	}
	now := w.s.now()
	if err := os.Chtimes(tmp, now, now); err != nil {
		return "", fmt.Errorf("blob %s: %w", name, err)
	}
	dir := w.s.path.AlgorithmDir(name.Algorithm())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("blob %s: %w", name, err)
	}
	// The rename is the commit point: a file at its final name is a
	// whole blob whose bytes hashed to that name. Another process may
	// have renamed the same bytes in already; replacing them is harmless.
	faultpoint.Hit("blob:before-rename")
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("blob %s: publishing %s: %w", name, final, err)
	}
	faultpoint.Hit("blob:after-rename")
	w.committed = true
	if w.partial {
		// The partial file is the blob now; its hash state is litter.
		_ = w.s.path.RemoveHashState(name)
	}
	if w.s.durable {
		faultpoint.Hit("blob:before-dirsync")
		if err := fsutil.SyncDir(dir); err != nil {
			return "", fmt.Errorf("blob %s: %w", name, err)
		}
	}
	return name, nil
}

// Close abandons the blob if it was not committed: the temp file is
// removed and nothing is published. A partial Writer's file (OpenPartial)
// is kept instead, for the next writer of the blob to resume, with its
// hash state saved beside it; unless the check of a resumed prefix found
// it wrong, which removes both. It is safe to call after Commit.
func (w *Writer) Close() (err error) {
	defer diskerr.MarkAt(&err)
	if w.done {
		return nil
	}
	w.done = true
	w.out.wait()
	// The check reads the file: it ends before the file is closed.
	wrong := w.stopCheck()
	if w.partial && !w.committed && !w.dropping && !wrong {
		w.saveFinalHashState()
	}
	w.f.Close()
	if w.partial {
		if wrong && !w.committed && !w.dropping {
			return w.removePartial()
		}
		return nil
	}
	if err := os.Remove(w.f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", w.f.Name(), err)
	}
	return nil
}
