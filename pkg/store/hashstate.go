package store

import (
	"bytes"
	"context"
	"encoding"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/testhook"
)

// Hash states of partial downloads.
//
// A resume must hash every byte of the blob, the partial file's too, or
// Commit could publish bytes nobody checked. Hashing a large prefix again
// before asking for the rest put that hash on the critical path of a
// resume (bench row 10′: a resume at 50 % of 1 GiB took 0.83× a cold
// warm). So a partial Writer saves its running hash state (Go's sha256
// and sha512 implement encoding.BinaryMarshaler) with its offset in a
// sidecar beside the partial file (ingest/<alg>-<encoded>.hashstate),
// every hashStateEvery bytes and when it is abandoned. A resume that finds
// a usable one restores the hash at its offset X, hashes only the bytes
// from X to the file's end before the download goes on, and hashes
// [0, X) from disk in a goroutine beside it (prefixCheck). Commit waits
// for that check and publishes nothing unless the state recomputed at X
// equals the saved one, so every byte of a committed blob was hashed and
// matched, as without the sidecar. The sidecar is never trusted: a stale,
// forged or torn one fails the check, the partial file is dropped, and
// the fetch step downloads the blob again from zero.

// hashStateEvery is how many bytes a partial Writer hashes between two
// saves of its state, and so about how many bytes of the partial file a
// resume hashes before its download goes on: that hash is on a resume's
// critical path (16 MiB: 10–20 ms of sha256 on the bench's machines; at
// 64 MiB, row 10′ measured 0.61× a cold warm against its ≤ 0.6 target),
// while a save costs a temp file and a rename (64 per GiB written). After
// a kill it may be more by what was in flight: a state is saved only once
// the file holds its bytes, at the next write after that (saveHashState),
// so a download that stalled before the pipe caught up leaves the state
// before.
const hashStateEvery = 16 << 20

// maxHashStateSize bounds what is read of a sidecar: a sha512 state (204
// bytes, 272 in base64) with its header, digest and offset takes about
// 450. Anything longer is not one of ours and is ignored.
const maxHashStateSize = 512

// hashStateMagic is the first line of a sidecar.
const hashStateMagic = "layercache hash state 1"

// encodeHashState is a sidecar's content: the magic line, the blob's
// digest, the offset the state was taken at, and the state in base64, one
// per line.
func encodeHashState(d digest.Digest, offset int64, state []byte) []byte {
	return fmt.Appendf(nil, "%s\n%s\n%d\n%s\n", hashStateMagic, d, offset, base64.StdEncoding.EncodeToString(state))
}

// decodeHashState parses a sidecar of blob d. ok is false for anything
// that is not one, or that names another blob.
func decodeHashState(d digest.Digest, data []byte) (offset int64, state []byte, ok bool) {
	if len(data) > maxHashStateSize {
		return 0, nil, false
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) != 5 || lines[0] != hashStateMagic || lines[1] != d.String() || lines[4] != "" {
		return 0, nil, false
	}
	offset, err := strconv.ParseInt(lines[2], 10, 64)
	if err != nil || offset <= 0 {
		return 0, nil, false
	}
	state, err = base64.StdEncoding.DecodeString(lines[3])
	if err != nil {
		return 0, nil, false
	}
	return offset, state, true
}

// restoreHashState makes a partial Writer that resumed a file go on from
// the hash state saved beside it, if there is a usable one: a sidecar of
// w.expected at an offset within the file, whose state the hash of the
// digest's algorithm takes. It then starts the check of the bytes before
// that offset. Anything else (no sidecar, a symlink, a FIFO, a folder,
// garbage, another algorithm's state) is ignored, and Prefix hashes the
// whole file as it is read.
func (w *Writer) restoreHashState() {
	data, err := w.s.path.ReadHashState(w.expected, maxHashStateSize)
	if err != nil {
		return
	}
	offset, state, ok := decodeHashState(w.expected, data)
	if !ok || offset > w.resumed {
		return
	}
	h := w.alg.Hash()
	u, ok := h.(encoding.BinaryUnmarshaler)
	if !ok || u.UnmarshalBinary(state) != nil {
		return
	}
	w.h, w.hashFrom, w.savedAt = h, offset, offset
	w.check = startPrefixCheck(w.ctx, w.f, w.expected, offset, state)
}

// saveHashState notes the running hash state as due for a save once
// every bytes were hashed since the last, and saves it once the file holds
// the bytes it covers: a state past the file's end (the file is written
// from a goroutine of its own, pipeFile) would be no use to a resume
// after a kill. A save that fails costs a longer resume, nothing else.
func (w *Writer) saveHashState() {
	if w.pending == nil && w.n-w.savedAt >= w.every {
		state, err := w.h.(encoding.BinaryMarshaler).MarshalBinary()
		if err != nil {
			w.every = 0
			return
		}
		w.pending, w.pendingAt = state, w.n
		w.savedAt = w.n // counted from here, whatever becomes of this one
	}
	if w.pending != nil && w.resumed+w.out.written.Load() >= w.pendingAt {
		_ = w.s.path.WriteHashState(w.expected, encodeHashState(w.expected, w.pendingAt, w.pending))
		w.pending = nil
	}
}

// saveFinalHashState saves the hash state of an abandoned partial Writer,
// whose file is written and closed, so that the next writer resumes from
// its end without hashing it first.
func (w *Writer) saveFinalHashState() {
	if w.every <= 0 || w.err != nil || w.n < w.hashFrom || w.n == 0 {
		return // nothing hashed past a restored state, or a write failed
	}
	if w.n > w.resumed+w.out.written.Load() {
		return // the file lacks bytes the state covers
	}
	if w.pending == nil && w.n == w.savedAt {
		return // saved already
	}
	state, err := w.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return
	}
	_ = w.s.path.WriteHashState(w.expected, encodeHashState(w.expected, w.n, state))
}

// hashStateInterval is how often a partial Writer under ctx saves its
// hash state, or 0 if its hash cannot be saved.
func hashStateInterval(ctx context.Context, alg digest.Algorithm) int64 {
	if _, ok := alg.Hash().(encoding.BinaryMarshaler); !ok {
		return 0
	}
	if n := testhook.HashStateEvery(ctx); n > 0 {
		return n
	}
	return hashStateEvery
}

// errCheckStopped ends a prefix check that its Writer no longer needs.
var errCheckStopped = errors.New("check of the partial download stopped")

// prefixCheck hashes the first n bytes of a partial file in a goroutine
// and compares the state it reaches with the one saved at n.
type prefixCheck struct {
	done chan struct{}
	stop atomic.Bool
	err  error // set before done is closed
}

func startPrefixCheck(ctx context.Context, f *os.File, d digest.Digest, n int64, want []byte) *prefixCheck {
	c := &prefixCheck{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = c.run(ctx, f, d, n, want)
	}()
	return c
}

func (c *prefixCheck) run(ctx context.Context, f *os.File, d digest.Digest, n int64, want []byte) error {
	h := d.Algorithm().Hash()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for off := int64(0); off < n; {
		if c.stop.Load() {
			return errCheckStopped
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), n-off)]
		k, err := f.ReadAt(b, off)
		h.Write(b[:k])
		off += int64(k)
		if err == io.EOF && off < n {
			return fmt.Errorf("blob %s: %w: its partial download (%s) shrank below %d bytes, where its hash state was saved",
				d, ErrDigestMismatch, f.Name(), n)
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("blob %s: checking its partial download: %w", d, err)
		}
	}
	got, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return fmt.Errorf("blob %s: checking its partial download: %w", d, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("blob %s: %w: the first %d bytes of its partial download (%s) do not hash to the state saved beside it",
			d, ErrDigestMismatch, n, f.Name())
	}
	return nil
}

// wait returns the check's outcome once it is done.
func (c *prefixCheck) wait() error {
	<-c.done
	return c.err
}

// cancel stops the check and waits for its goroutine, which reads the
// Writer's file, to end; it returns the outcome if the check ended first.
func (c *prefixCheck) cancel() error {
	c.stop.Store(true)
	return c.wait()
}

// PrefixCheck waits for the check of the bytes a partial Writer resumed
// from a saved hash state (see OpenPartial) and returns its outcome: nil
// when there was nothing to check or the bytes on disk hashed to the saved
// state, and an error wrapping ErrDigestMismatch when they did not, or
// another error when they could not be read; Commit then publishes
// nothing. Until it returns nil, Digest relies on the saved state.
func (w *Writer) PrefixCheck() error {
	if w.check == nil {
		return nil
	}
	return w.check.wait()
}

// SkipChecked moves a partial Writer past the first bytes of its file
// that a restored hash state covers, without reading them, and returns how
// many it skipped (0 when no state was restored, or Prefix read past
// them). It is for a caller that only stores the blob and does not want
// them: its download goes on at once. They are hashed all the same, by
// the check that Commit waits for; Prefix gives the bytes after them.
func (w *Writer) SkipChecked() int64 {
	if w.done || w.n >= w.hashFrom {
		return 0
	}
	k := w.hashFrom - w.n
	w.n = w.hashFrom
	return k
}

// stopCheck stops a prefix check that is no longer needed, and reports
// whether it had found the bytes wrong.
func (w *Writer) stopCheck() (wrong bool) {
	if w.check == nil {
		return false
	}
	err := w.check.cancel()
	w.check = nil
	return errors.Is(err, ErrDigestMismatch)
}
