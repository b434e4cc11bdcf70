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
	"github.com/ocibuild/layercache/internal/testhook"
)

// OpenPartial starts or resumes writing blob d through a file in ingest/
// whose name is derived from d, so that a download that was cut short, or
// whose process was killed, is resumed by the next writer of d instead of
// starting again from zero. The caller must hold d's lock (LockBlob): the
// name is shared by every process, and the lock is what makes that safe.
//
// Resumed says how many bytes the file held when it was opened. They are
// not trusted: reading Prefix hashes them, as any other byte, and Commit
// publishes the blob only if every byte, old and new, hashed to d. When a
// hash state saved beside the file (hashstate.go) covers its first X
// bytes, Prefix hashes only the bytes after X, and a goroutine hashes the
// first X from disk meanwhile; Commit (and PrefixCheck) wait for it, and
// publish nothing unless they reached the saved state. Write
// may be called only once Prefix has been read to its end (or Restart
// dropped it). size is the expected length, or -1 if unknown; a file
// longer than size is dropped at once.
//
// Close keeps the file for a later resume; Discard removes it; Commit
// publishes it, or removes it when its bytes are not d.
func (s *Store) OpenPartial(ctx context.Context, d digest.Digest, size int64) (w *Writer, err error) {
	defer diskerr.MarkAt(&err)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := s.path.OpenPartial(d)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	w = &Writer{s: s, ctx: ctx, f: f, out: newPipeFile(f), h: d.Algorithm().Hash(), alg: d.Algorithm(),
		expected: d, size: size, partial: true, resumed: fi.Size(),
		every: hashStateInterval(ctx, d.Algorithm()), prefixHashedCtr: testhook.PrefixHashed(ctx)}
	switch {
	case size >= 0 && w.resumed > size:
		if err := w.Restart(); err != nil {
			w.Close()
			return nil, err
		}
	case w.resumed == 0:
		// A sidecar without a partial file is litter (a kill between
		// a commit and its removal): no later file may use it.
		_ = s.path.RemoveHashState(d)
	case w.every > 0:
		w.restoreHashState()
	}
	return w, nil
}

// Resumed returns how many bytes a partial Writer's file held when it was
// opened (see OpenPartial), or after Restart, zero.
func (w *Writer) Resumed() int64 { return w.resumed }

// Prefix returns a reader of the bytes a partial Writer resumed: reading
// them hashes them and counts them in Size, as if they had been written.
func (w *Writer) Prefix() io.Reader { return prefixReader{w} }

type prefixReader struct{ w *Writer }

func (r prefixReader) Read(b []byte) (int, error) {
	w := r.w
	left := w.resumed - w.n
	if left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > left {
		b = b[:left]
	}
	n, err := w.f.ReadAt(b, w.n)
	// Bytes before hashFrom are covered by a restored hash state, and
	// hashed by its check (hashstate.go), not here.
	hashed := b[:n]
	if skip := w.hashFrom - w.n; skip > 0 {
		hashed = hashed[min(skip, int64(n)):]
	}
	w.h.Write(hashed)
	w.prefixHashed += int64(len(hashed))
	if w.prefixHashedCtr != nil {
		w.prefixHashedCtr.Add(int64(len(hashed)))
	}
	w.n += int64(n)
	if err == io.EOF && w.n < w.resumed {
		err = io.ErrUnexpectedEOF // the file shrank under us
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// Restart drops every byte written so far, those of a resumed file too,
// so that the blob is written again from its first byte.
func (w *Writer) Restart() (err error) {
	defer diskerr.MarkAt(&err)
	if w.done {
		return errors.New("restart of a committed or closed blob writer")
	}
	if err := w.out.wait(); err != nil && w.err == nil {
		w.err = w.writeError(err)
	}
	w.stopCheck()
	w.hashFrom, w.savedAt, w.pending = 0, 0, nil
	// The state describes bytes about to go: it goes first. One that
	// cannot be removed (a folder planted at its name) is no matter: a
	// state is never used unchecked.
	_ = w.s.path.RemoveHashState(w.expected)
	if err := w.f.Truncate(0); err != nil {
		return fmt.Errorf("blob %s: restarting %s: %w", w.expected, w.f.Name(), err)
	}
	w.out = newPipeFile(w.f)
	w.h = w.alg.Hash()
	w.n, w.resumed, w.err = 0, 0, nil
	return nil
}

// Discard abandons a partial Writer and removes its file and its hash
// state, so that the next download of the blob starts from zero. It is
// safe to call after Commit or Close.
func (w *Writer) Discard() (err error) {
	defer diskerr.MarkAt(&err)
	w.dropping = true
	w.Close()
	if w.committed {
		return nil // the file is the blob now
	}
	return w.removePartial()
}

// removePartial removes a partial Writer's file and its hash state (which
// may fail on a folder planted at its name: a state is never used
// unchecked, so that is no matter).
func (w *Writer) removePartial() error {
	name := w.f.Name()
	if w.partial {
		_ = w.s.path.RemoveHashState(w.expected)
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	return nil
}
