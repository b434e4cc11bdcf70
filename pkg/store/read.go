package store

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/internal/layoutfs"
)

// bufSize is the read size of the store's copy loops. 256 KiB reads keep
// syscall overhead far below the cost of hashing (io.Copy's 32 KiB
// buffer, or io.Discard's 8 KiB reads, leave measurable throughput behind),
// and copy out of the page cache faster here than 1 MiB reads, whose
// buffer no longer fits in the CPU's caches.
const bufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// ReadOption changes how Open, Get and Stat read a blob. The options are
// the functions below, passed as values: s.Open(ctx, d, store.VerifyFirst).
type ReadOption func(*readOptions)

type readOptions struct {
	verifyFirst bool // hash the whole blob before returning
	inspect     bool // leave last use and a corrupted blob alone
}

func makeReadOptions(opts []ReadOption) readOptions {
	var o readOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// VerifyFirst makes Open hash the whole blob before it returns, and then
// return a reader of the same open file from its start: every byte it
// serves was verified, so callers may hand bytes on at once. This is the
// read of the pull path, where a mismatch found at the end of a stream
// would be too late to heal. It costs a second read of the file, which the
// page cache makes cheap next to hashing. With Stat, VerifyFirst hashes
// the blob too, as a verify tool does. Get always verifies first.
//
// The reader it returns also implements io.Seeker, within the verified
// blob, and io.WriterTo, which hands the file itself, limited to the
// blob's size, to a destination that implements io.ReaderFrom (an
// http.ResponseWriter, a TCP connection, an *os.File; not io.Discard,
// whose ReadFrom reads 8 KiB at a time), so that io.Copy lets the kernel
// copy it (sendfile(2), copy_file_range(2)) instead of reading it into
// memory. It still ends with ErrCorrupted if the file turns out shorter
// than it was when hashed.
func VerifyFirst(o *readOptions) { o.verifyFirst = true }

// Inspect makes a read look at the cache without changing it, for tools
// that list or check a cache rather than use it: the blob's last use is
// left alone, so looking does not change what Prune evicts, and a
// corrupted blob gives ErrCorrupted but stays in place for the caller to
// report or Delete. Stat never changes the store, with or without it.
func Inspect(o *readOptions) { o.inspect = true }

// Open returns a reader of the blob d that hashes the bytes it returns. At
// the end it returns io.EOF only if the size and the digest matched;
// otherwise it returns an error wrapping ErrCorrupted, and the bad file has
// already been removed (unless Inspect). A caller that stops reading early
// has verified nothing. Bytes returned before a corruption is detected must
// not be trusted: callers that cannot take bytes back pass VerifyFirst.
//
// A missing blob gives ErrNotFound; a malformed digest gives
// ErrInvalidDigest and touches no file. Reading refreshes the blob's last
// use, at most once an hour (unless Inspect).
//
// The blob's file is immutable once published, and the reader keeps the
// file open, so a concurrent Delete, Prune or republication does not
// change what it serves.
func (s *Store) Open(ctx context.Context, d digest.Digest, opts ...ReadOption) (rc io.ReadCloser, err error) {
	defer diskerr.MarkAt(&err)
	rc, _, err = s.open(ctx, d, makeReadOptions(opts))
	return rc, err
}

// OpenVerified is Open(ctx, d, VerifyFirst) that also returns the blob's
// Info, for callers that count what they serve.
func (s *Store) OpenVerified(ctx context.Context, d digest.Digest) (rc io.ReadCloser, info Info, err error) {
	defer diskerr.MarkAt(&err)
	return s.open(ctx, d, readOptions{verifyFirst: true})
}

// open is Open with its options made, returning the blob's Info too.
func (s *Store) open(ctx context.Context, d digest.Digest, o readOptions) (io.ReadCloser, Info, error) {
	f, fi, path, err := s.openFor(ctx, d, o)
	if err != nil {
		return nil, Info{}, err
	}
	info := Info{Digest: d, Size: fi.Size(), LastUsed: fi.ModTime()}
	if !o.verifyFirst {
		return &verifyReader{s: s, f: f, fi: fi, d: d, path: path, h: d.Algorithm().Hash(), keep: o.inspect}, info, nil
	}
	// Hashing through a memory map instead, to copy each byte out of the
	// page cache once, measured slower here (bench/: 0.77x of the ideal
	// read against 0.84x): the page faults land inside the hash loop, and
	// the hash reads memory that no copy has brought into the CPU's
	// caches. hashFile reads ahead in a second goroutine instead.
	if err := s.hashFile(ctx, f, fi, d, path); err != nil {
		f.Close()
		if errors.Is(err, ErrCorrupted) && !o.inspect {
			s.removeCorrupted(d, path, fi, err)
		}
		return nil, Info{}, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, Info{}, fmt.Errorf("blob %s (%s): %w", d, path, err)
	}
	return &sizedReader{f: f, size: fi.Size(), remaining: fi.Size(), d: d, path: path}, info, nil
}

// MaxBlobInMemory is the size of the largest blob that Get reads into
// memory; a larger one gives ErrTooLarge. Manifests and configs are far
// smaller: distribution refuses manifests over 4 MiB, and the pull path
// (package remotecache) reads none over 8 MiB from a registry. Without a
// bound, a file planted at a manifest's digest (an 8 GiB sparse file costs
// nothing to make) would make Get allocate its size and crash the process.
const MaxBlobInMemory = layoutfs.MaxManifestSize

// Get returns the whole blob d, verified before it returns anything. It is
// meant for manifests and configs: it holds the blob in memory, so avoid it
// for layers. A blob larger than MaxBlobInMemory gives ErrTooLarge and is
// neither read nor removed; other errors are those of Open, and so is what
// Inspect changes.
func (s *Store) Get(ctx context.Context, d digest.Digest, opts ...ReadOption) (data []byte, err error) {
	defer diskerr.MarkAt(&err)
	o := makeReadOptions(opts)
	f, fi, path, err := s.openFor(ctx, d, o)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := readWhole(f, fi, d, path)
	if errors.Is(err, ErrCorrupted) && !o.inspect {
		s.removeCorrupted(d, path, fi, err)
	}
	return b, err
}

// readWhole reads an opened blob into memory and checks it against d. It
// allocates no more than MaxBlobInMemory+1 bytes, whatever is at the path.
func readWhole(f *os.File, fi fs.FileInfo, d digest.Digest, path string) ([]byte, error) {
	// The size found at open decides before anything is allocated; the
	// read below is bounded by the buffer, so a file that grows after
	// this check is read no further than one byte past its old size.
	if fi.Size() > MaxBlobInMemory {
		return nil, fmt.Errorf("blob %s (%s): %w: %d bytes, more than %d", d, path, ErrTooLarge, fi.Size(), MaxBlobInMemory)
	}
	// One byte more than the size found at open, to notice growth.
	buf := make([]byte, fi.Size()+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("blob %s (%s): %w", d, path, err)
	}
	buf = buf[:n]
	if got := d.Algorithm().FromBytes(buf); got != d || int64(n) != fi.Size() {
		return nil, corruptedError(d, path, int64(n), got)
	}
	return buf, nil
}

// verify hashes the stored blob d and reports whether it matches, without
// removing it or refreshing its last use: Stat with VerifyFirst.
func (s *Store) verify(ctx context.Context, d digest.Digest) (Info, error) {
	f, fi, path, err := s.openFileNoTouch(ctx, d)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	if err := s.hashFile(ctx, f, fi, d, path); err != nil {
		return Info{}, err
	}
	return Info{Digest: d, Size: fi.Size(), LastUsed: fi.ModTime()}, nil
}

// openFor opens the blob as o says: with Inspect, as it is; otherwise
// through openFile.
func (s *Store) openFor(ctx context.Context, d digest.Digest, o readOptions) (*os.File, fs.FileInfo, string, error) {
	if o.inspect {
		return s.openFileNoTouch(ctx, d)
	}
	return s.openFile(ctx, d)
}

// openFile opens the blob for reading and refreshes its last use.
func (s *Store) openFile(ctx context.Context, d digest.Digest) (*os.File, fs.FileInfo, string, error) {
	f, fi, path, err := s.openFileNoTouch(ctx, d)
	if err != nil {
		if errors.Is(err, ErrCorrupted) {
			s.removeCorrupted(d, path, nil, err)
		}
		return nil, nil, "", err
	}
	if now := s.now(); now.Sub(fi.ModTime()) > lastUseInterval {
		// Best effort: a read-only cache still serves reads.
		_ = os.Chtimes(path, now, now)
	}
	return f, fi, path, nil
}

// openFileNoTouch opens the blob without following symlinks, and checks it
// is a regular file. A symlink, a directory or a device planted at the
// blob's name is reported as ErrCorrupted.
func (s *Store) openFileNoTouch(ctx context.Context, d digest.Digest) (*os.File, fs.FileInfo, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, "", err
	}
	path, err := s.blobPath(d)
	if err != nil {
		return nil, nil, "", err
	}
	// O_NOFOLLOW: a symlink at the final name is never read through.
	// O_NONBLOCK: a FIFO planted there cannot hang the open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, path, fmt.Errorf("blob %s (%s): %w: it is a symlink", d, path, ErrCorrupted)
		}
		return nil, nil, path, s.mapErr(d, path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, path, fmt.Errorf("blob %s (%s): %w", d, path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, path, fmt.Errorf("blob %s (%s): %w: not a regular file (%s)", d, path, ErrCorrupted, fi.Mode().Type())
	}
	return f, fi, path, nil
}

// hashFile reads f from its current offset to the end and checks that it
// holds exactly fi.Size() bytes hashing to d.
func (s *Store) hashFile(ctx context.Context, f *os.File, fi fs.FileInfo, d digest.Digest, path string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h := d.Algorithm().Hash()
	s.hashing.start()
	n, err := hashReadAhead(ctx, f, h, fi.Size(), s.hashing.spare)
	s.hashing.end()
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("blob %s (%s): %w", d, path, err)
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d || n != fi.Size() {
		return corruptedError(d, path, n, got)
	}
	return nil
}

func corruptedError(d digest.Digest, path string, n int64, got digest.Digest) error {
	return fmt.Errorf("blob %s (%s): %w: %d bytes hash to %s", d, path, ErrCorrupted, n, got)
}

// removeCorrupted removes the bad entry at path, but only if it is still the
// file that failed (fi), so that a good blob renamed in by another process
// in the meantime survives. fi is nil for entries that could not be opened
// as files (symlinks, directories); those are removed as they are.
func (s *Store) removeCorrupted(d digest.Digest, path string, fi fs.FileInfo, cause error) {
	if path == "" {
		return
	}
	if fi != nil {
		cur, err := os.Lstat(path)
		if err != nil || !os.SameFile(cur, fi) {
			return
		}
	}
	if err := os.RemoveAll(path); err != nil {
		s.log.Warn("cannot remove corrupted blob", "digest", d, "path", path, "err", err)
		return
	}
	s.log.Warn("removed corrupted blob", "digest", d, "path", path, "cause", cause)
}

// verifyReader is the reader of Open: it hashes what it returns and turns
// the final io.EOF into ErrCorrupted when size or digest are wrong.
type verifyReader struct {
	s    *Store
	f    *os.File
	fi   fs.FileInfo
	d    digest.Digest
	path string
	h    hash.Hash
	n    int64
	err  error // sticky: once failed, always failed
	keep bool  // Inspect: a corrupted blob stays in place
}

func (r *verifyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.f.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	switch {
	case r.n > r.fi.Size():
		// The file grew since it was opened: no blob does that.
		r.fail()
	case err == io.EOF:
		if got := digest.NewDigest(r.d.Algorithm(), r.h); got != r.d || r.n != r.fi.Size() {
			r.err = corruptedError(r.d, r.path, r.n, got)
			r.remove()
		} else {
			r.err = io.EOF
		}
	case err != nil:
		r.err = fmt.Errorf("blob %s (%s): %w", r.d, r.path, err)
	}
	return n, r.err
}

func (r *verifyReader) fail() {
	r.err = corruptedError(r.d, r.path, r.n, digest.NewDigest(r.d.Algorithm(), r.h))
	r.remove()
}

// remove removes the blob that failed, unless the read is Inspect's.
func (r *verifyReader) remove() {
	if !r.keep {
		r.s.removeCorrupted(r.d, r.path, r.fi, r.err)
	}
}

// WriteTo copies the rest of the blob to w with large reads, so io.Copy
// from a verifyReader needs no buffer of its own and hashes at full speed.
func (r *verifyReader) WriteTo(w io.Writer) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (r *verifyReader) Close() error { return r.f.Close() }

// smallRead is the size under which sizedReader buffers a read.
const smallRead = 64 << 10

// sizedReader serves a blob that Open with VerifyFirst already hashed. It still
// checks that the file ends where it ended when hashed.
//
// Small reads are served from a buffer of bufSize filled by one read(2):
// a consumer that reads 32 KiB at a time (io.Copy's buffer, ggcr's
// verifying reader above a Transport) would otherwise pay a system call,
// and a slower copy out of the page cache, for every 32 KiB. Reads of
// smallRead or more (a decompressor's 128 KiB buffer) go to the file
// directly: copying them twice would cost more than it saves.
type sizedReader struct {
	f         *os.File
	size      int64 // the blob's, when hashed
	remaining int64 // in the file, past what was read from it
	d         digest.Digest
	path      string

	buf        *[]byte // from bufPool, once a small read needed it
	start, end int     // what of buf is not served yet
}

func (r *sizedReader) Read(p []byte) (int, error) {
	if r.start < r.end {
		n := copy(p, (*r.buf)[r.start:r.end])
		r.start += n
		return n, nil
	}
	if r.remaining <= 0 {
		return 0, io.EOF
	}
	if len(p) >= smallRead || int64(len(p)) >= r.remaining {
		return r.readFile(p)
	}
	if r.buf == nil {
		r.buf = bufPool.Get().(*[]byte)
	}
	n, err := r.readFile(*r.buf)
	r.start, r.end = 0, n
	m := copy(p, (*r.buf)[:n])
	r.start = m
	if m < n {
		err = nil // the rest is served first; a failure comes up again
	}
	return m, err
}

// readFile reads from the file into p, up to the size the blob had.
func (r *sizedReader) readFile(p []byte) (int, error) {
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.f.Read(p)
	r.remaining -= int64(n)
	if err == io.EOF && r.remaining > 0 {
		return n, fmt.Errorf("blob %s (%s): %w: shrank while being read", r.d, r.path, ErrCorrupted)
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// WriteTo copies the rest of the blob to w. A w that implements
// io.ReaderFrom is handed the file itself, limited to the rest of the
// blob, so that a connection or a file copies it in the kernel; any other
// w, and io.Discard (whose ReadFrom reads 8 KiB at a time), gets large
// reads (see verifyReader.WriteTo). The file was hashed whole already:
// what remains is to check that it did not shrink.
func (r *sizedReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if r.start < r.end {
		n, err := w.Write((*r.buf)[r.start:r.end])
		r.start += n
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	rf, ok := w.(io.ReaderFrom)
	if !ok || w == io.Discard {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		n, err := io.CopyBuffer(w, struct{ io.Reader }{r}, *bp)
		return total + n, err
	}
	if r.remaining <= 0 {
		return total, nil
	}
	lr := &io.LimitedReader{R: r.f, N: r.remaining}
	n, err := rf.ReadFrom(lr)
	total += n
	r.remaining = lr.N
	if err == nil && r.remaining > 0 {
		err = fmt.Errorf("blob %s (%s): %w: shrank while being read", r.d, r.path, ErrCorrupted)
	}
	return total, err
}

// Seek sets where the next read starts in the blob. Every byte of the
// blob was verified, so a read may start anywhere in it; an offset past
// its end reads nothing.
func (r *sizedReader) Seek(offset int64, whence int) (int64, error) {
	pos := r.size - r.remaining - int64(r.end-r.start) // the next byte served
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += pos
	case io.SeekEnd:
		offset += r.size
	default:
		return pos, fmt.Errorf("blob %s: seek: invalid whence %d", r.d, whence)
	}
	if offset < 0 {
		return pos, fmt.Errorf("blob %s: seek: negative offset %d", r.d, offset)
	}
	if _, err := r.f.Seek(min(offset, r.size), io.SeekStart); err != nil {
		return pos, fmt.Errorf("blob %s (%s): %w", r.d, r.path, err)
	}
	r.start, r.end = 0, 0
	r.remaining = max(r.size-offset, 0)
	return offset, nil
}

func (r *sizedReader) Close() error {
	if r.buf != nil {
		bufPool.Put(r.buf)
		r.buf = nil
		r.start, r.end = 0, 0
	}
	return r.f.Close()
}
