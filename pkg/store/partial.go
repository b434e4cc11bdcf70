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
)

// OpenPartial starts or resumes writing blob d through a file in ingest/
// whose name is derived from d, so that a download that was cut short, or
// whose process was killed, is resumed by the next writer of d instead of
// starting again from zero. The caller must hold d's lock (LockBlob): the
// name is shared by every process, and the lock is what makes that safe.
//
// Resumed says how many bytes the file held when it was opened. They are
// not trusted: reading Prefix hashes them, as any other byte, and Commit
// publishes the blob only if every byte, old and new, hashed to d. Write
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
		expected: d, size: size, partial: true, resumed: fi.Size()}
	if size >= 0 && w.resumed > size {
		if err := w.Restart(); err != nil {
			w.Close()
			return nil, err
		}
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
	w.h.Write(b[:n])
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
	if err := w.f.Truncate(0); err != nil {
		return fmt.Errorf("blob %s: restarting %s: %w", w.expected, w.f.Name(), err)
	}
	w.out = newPipeFile(w.f)
	w.h = w.alg.Hash()
	w.n, w.resumed, w.err = 0, 0, nil
	return nil
}

// Discard abandons a partial Writer and removes its file, so that the
// next download of the blob starts from zero. It is safe to call after
// Commit or Close.
func (w *Writer) Discard() (err error) {
	defer diskerr.MarkAt(&err)
	name := w.f.Name()
	w.Close()
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	return nil
}
