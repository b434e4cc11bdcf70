package layoutfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ocibuild/layercache/internal/fsutil"
	"github.com/opencontainers/go-digest"
)

// Suffixes of the files in ingest/. layercache creates nothing there but
// the temp files of CreateTemp and the lock files of LockBlob, LockIndex
// and UpdateStats (see isIngestName), and Sweep removes nothing else.
const (
	tempSuffix    = ".tmp"
	partialSuffix = ".partial"
	// hashStateSuffix names the sidecar of a partial download: the
	// running hash of its first bytes, so that a resume need not hash
	// them again before it goes on (see pkg/store/hashstate.go).
	hashStateSuffix = ".hashstate"
	lockSuffix      = ".lock"
	// indexLockName is never removed: a lock file that is unlinked while
	// a process waits on it lets two processes hold "the" lock, and for
	// index.json that would lose refs.
	indexLockName = IndexFile + lockSuffix
)

// blobTempPrefix begins the names of the temp files of blobs being written,
// and hashStateTempPrefix those of hash-state sidecars being written.
const (
	blobTempPrefix      = "blob-"
	hashStateTempPrefix = "hashstate-"
)

// tempPrefix returns the prefix of the names of layercache's temp files
// that name begins with: blobs being written (pkg/store), and rewrites of
// index.json, oci-layout and the stats file (replaceFile, initIndex).
func tempPrefix(name string) (string, bool) {
	for _, prefix := range [...]string{blobTempPrefix, hashStateTempPrefix, IndexFile + ".", LayoutFile + ".", StatsFile + "."} {
		if strings.HasPrefix(name, prefix) {
			return prefix, true
		}
	}
	return "", false
}

// isTempName reports whether name is one that CreateTemp gives a temp
// file: one of the prefixes of tempPrefix, then the random part of
// os.CreateTemp (never empty), then ".tmp".
func isTempName(name string) bool {
	rest, ok := strings.CutSuffix(name, tempSuffix)
	prefix, known := tempPrefix(rest)
	return ok && known && len(rest) > len(prefix)
}

// isBlobLockName reports whether name is that of a per-digest lock file:
// <alg>-<encoded>.lock, for a digest that Validate accepts.
func isBlobLockName(name string) bool {
	rest, ok := strings.CutSuffix(name, lockSuffix)
	alg, enc, dash := strings.Cut(rest, "-")
	if !ok || !dash {
		return false
	}
	_, err := ParseBlobName(digest.Algorithm(alg), enc)
	return err == nil
}

// isPartialName reports whether name is that of a partial download:
// <alg>-<encoded>.partial, for a digest that Validate accepts.
func isPartialName(name string) bool { return isDigestName(name, partialSuffix) }

// isHashStateName reports whether name is that of a partial download's
// hash-state sidecar: <alg>-<encoded>.hashstate, for a digest that
// Validate accepts.
func isHashStateName(name string) bool { return isDigestName(name, hashStateSuffix) }

// isDigestName reports whether name is <alg>-<encoded> followed by
// suffix, for a digest that Validate accepts.
func isDigestName(name, suffix string) bool {
	rest, ok := strings.CutSuffix(name, suffix)
	alg, enc, dash := strings.Cut(rest, "-")
	if !ok || !dash {
		return false
	}
	_, err := ParseBlobName(digest.Algorithm(alg), enc)
	return err == nil
}

// isIngestName reports whether name is one that layercache gives the files
// it creates in ingest/.
func isIngestName(name string) bool {
	return isTempName(name) || isBlobLockName(name) || isPartialName(name) || isHashStateName(name) ||
		name == indexLockName || name == statsLockName
}

// OpenPartial opens, creating it if need be, the file in ingest/ that
// keeps the bytes of a download of blob d while it is in progress, and
// after it was cut or its process killed: its name is derived from d
// (<alg>-<encoded>.partial), so the next download of d finds it and
// resumes. It is opened for appending, and must be a regular file. Only
// the holder of d's lock (LockBlob) may use it, which is what makes a
// shared name safe.
func (p Path) OpenPartial(d digest.Digest) (*os.File, error) {
	if err := Validate(d); err != nil {
		return nil, err
	}
	dir := p.Join(IngestDir)
	if err := CheckDir(dir); err != nil {
		return nil, fmt.Errorf("partial download of %s: %w", d, err)
	}
	path := filepath.Join(dir, string(d.Algorithm())+"-"+d.Encoded()+partialSuffix)
	f, err := fsutil.OpenRegular(path, os.O_RDWR|os.O_CREATE|os.O_APPEND)
	if err != nil {
		return nil, fmt.Errorf("partial download of %s: %w", d, err)
	}
	return f, nil
}

// hashStatePath is the path of the hash-state sidecar of d's partial
// download, once d is valid.
func (p Path) hashStatePath(d digest.Digest) string {
	return p.Join(IngestDir, string(d.Algorithm())+"-"+d.Encoded()+hashStateSuffix)
}

// ReadHashState reads the hash-state sidecar of d's partial download
// (<alg>-<encoded>.hashstate in ingest/), at most limit+1 bytes, so that a
// caller can tell one over its limit. Whatever stands at the name is
// opened only if it is a regular file (fsutil.ReadSmallFile: never through
// a symlink, never blocking on a FIFO). Its content is not trusted: the
// caller checks it against the partial file's bytes.
func (p Path) ReadHashState(d digest.Digest, limit int64) ([]byte, error) {
	if err := Validate(d); err != nil {
		return nil, err
	}
	if err := CheckDir(p.Join(IngestDir)); err != nil {
		return nil, fmt.Errorf("hash state of %s: %w", d, err)
	}
	b, err := fsutil.ReadSmallFile(p.hashStatePath(d), limit)
	if err != nil {
		return nil, fmt.Errorf("hash state of %s: %w", d, err)
	}
	return b, nil
}

// WriteHashState replaces the hash-state sidecar of d's partial download
// with data: written to a temp file in ingest/, then renamed over the
// name, so that a reader finds the old content or the new, never a torn
// one. It is not fsynced: a sidecar that a power loss tore or emptied
// fails its check at the next resume, which then starts over. Like the
// partial file, only the holder of d's lock may write it.
func (p Path) WriteHashState(d digest.Digest, data []byte) error {
	if err := Validate(d); err != nil {
		return err
	}
	f, err := p.CreateTemp(hashStateTempPrefix + "*")
	if err != nil {
		return fmt.Errorf("hash state of %s: %w", d, err)
	}
	_, werr := f.Write(data)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		// rename(2) replaces a symlink or a FIFO at the name, never
		// writing through it; it fails on a directory.
		werr = os.Rename(f.Name(), p.hashStatePath(d))
	}
	if werr != nil {
		syscall.Unlink(f.Name())
		return fmt.Errorf("hash state of %s: %w", d, werr)
	}
	return nil
}

// RemoveHashState removes the hash-state sidecar of d's partial download,
// if there is one. It never removes a directory.
func (p Path) RemoveHashState(d digest.Digest) error {
	if err := Validate(d); err != nil {
		return err
	}
	if err := syscall.Unlink(p.hashStatePath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the hash state of %s: %w", d, err)
	}
	return nil
}

// lockPollInterval is how often a blocked Lock retries. flock(2) has no
// timed wait, so waiting with a context means polling; 20 ms is short next
// to any blob download a waiter waits for.
const lockPollInterval = 20 * time.Millisecond

// CreateTemp creates a new temporary file in ingest/ whose name is unique
// across processes (os.CreateTemp). pattern follows os.CreateTemp; the
// ".tmp" suffix is added if missing. So that Sweep recognises every file
// it makes, pattern must be "blob-*", "hashstate-*" (a hash state being
// written, WriteHashState), or the name of a layout file (index.json,
// oci-layout, the stats file) followed by ".*"; any other pattern is
// refused.
func (p Path) CreateTemp(pattern string) (*os.File, error) {
	if !strings.HasSuffix(pattern, tempSuffix) {
		pattern += tempSuffix
	}
	if prefix, _, ok := strings.Cut(pattern, "*"); !ok || pattern != prefix+"*"+tempSuffix || !isTempName(prefix+"0"+tempSuffix) {
		return nil, fmt.Errorf("creating temp file: pattern %q is not one of layercache's temp files", pattern)
	}
	if err := CheckDir(p.Join(IngestDir)); err != nil {
		return nil, fmt.Errorf("creating temp file: %w", err)
	}
	f, err := os.CreateTemp(p.Join(IngestDir), pattern)
	if errors.Is(err, fs.ErrNotExist) {
		// ingest/ went away (a user removed it by hand): make it again.
		if mkErr := os.MkdirAll(p.Join(IngestDir), 0o755); mkErr == nil {
			f, err = os.CreateTemp(p.Join(IngestDir), pattern)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("creating temp file in %s: %w", p.Join(IngestDir), err)
	}
	return f, nil
}

// Lock is an exclusive advisory lock held on a file in ingest/ with
// flock(2). The kernel releases it when the holder's process dies, so a
// crash never leaves a cache locked.
type Lock struct {
	f *os.File
}

// Unlock releases the lock. It is safe to call more than once.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := flock(l.f, syscall.LOCK_UN)
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	return err
}

// LockBlob takes the per-digest lock of d, waiting until it is free or ctx
// is done. Holders use it so that one process downloads a blob while the
// others wait and then read it from the store.
func (p Path) LockBlob(ctx context.Context, d digest.Digest) (*Lock, error) {
	if err := Validate(d); err != nil {
		return nil, err
	}
	return p.lock(ctx, string(d.Algorithm())+"-"+d.Encoded()+lockSuffix)
}

// LockIndex takes the lock that serialises rewrites of index.json.
func (p Path) LockIndex(ctx context.Context) (*Lock, error) {
	return p.lock(ctx, indexLockName)
}

// lock takes the lock file called name in ingest/, waiting until it is
// free or ctx is done. A cancelled ctx creates no file.
func (p Path) lock(ctx context.Context, name string) (*Lock, error) {
	path := p.Join(IngestDir, name)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if err := CheckDir(p.Join(IngestDir)); err != nil {
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	f, err := p.openLockFile(ctx, path)
	if err == nil {
		if err = lockFile(ctx, f); err != nil {
			f.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// openLockFile opens the lock file at path, creating it if it is missing.
// It opens only a regular file (fsutil.OpenRegular: never through a symlink,
// which would make the lock create or open a file outside the cache, and
// never a FIFO, which would block). Anything else at the name is not a
// lock file anybody can hold, since no lock is ever taken on one, so it is
// replaced (replaceNonRegular) and the lock file made afresh.
func (p Path) openLockFile(ctx context.Context, path string) (*os.File, error) {
	const tries = 3
	for range tries {
		f, err := fsutil.OpenRegular(path, os.O_RDONLY|os.O_CREATE)
		if !errors.Is(err, fsutil.ErrNotRegular) {
			return f, err
		}
		if err := p.replaceNonRegular(ctx, path); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%s: %w: something else stood there again after each of %d replacements", path, fsutil.ErrNotRegular, tries)
}

// replaceNonRegular removes what stands at path, a lock file's name in
// ingest/, if it is anything but a regular file: a symlink, a FIFO, a
// socket or a device is unlinked, a directory is removed only if it is
// empty (what a directory holds is not layercache's), and a directory
// holding files gives an error that names it.
//
// Lock files are never removed while they may be held (the index lock
// never at all), because a process that locks an unlinked file and one
// that locks its replacement would both hold "the" lock. So a removal by
// name must never hit a lock file that another process made in place of
// the entry this one found. Replacements are therefore serialised by a
// flock on ingest/ itself, and the entry is looked at again under it:
// processes that found the same FIFO remove it once between them, and
// none of them removes the regular file that replaced it.
func (p Path) replaceNonRegular(ctx context.Context, path string) error {
	dir, err := fsutil.OpenDir(p.Join(IngestDir), true)
	if err != nil {
		return err
	}
	defer dir.Close() // which releases the flock
	if err := lockFile(ctx, dir); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode().IsRegular():
		return nil // replaced by another process while this one waited
	case fi.IsDir():
		if err := syscall.Rmdir(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("it is a directory where a lock file belongs, and it cannot be removed (%v); layercache removes no directory that holds files: move it away", err)
		}
		return nil
	}
	if err := syscall.Unlink(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("it is %s where a lock file belongs, and it cannot be removed: %w", fsutil.Kind(fi.Mode()), err)
	}
	return nil
}

// lockFile takes an exclusive flock on f, waiting until it is free or ctx
// is done. flock(2) has no timed wait, and a blocked flock cannot be
// interrupted, so waiting with a context means trying without blocking
// every lockPollInterval.
func lockFile(ctx context.Context, f *os.File) error {
	for {
		err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		t := time.NewTimer(lockPollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// flock applies flock(2) operation how to f, retrying on EINTR.
func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		for {
			if ferr = syscall.Flock(int(fd), how); ferr != syscall.EINTR {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if ferr != nil {
		return &os.PathError{Op: "flock", Path: f.Name(), Err: ferr}
	}
	return nil
}

// Sweep removes litter from ingest/ whose modification time is before
// cutoff: temporary files that a crashed or killed writer left behind,
// partial downloads nobody resumed (isPartialName) and their hash-state
// sidecars (isHashStateName), and per-digest lock files that nobody holds.
// It removes only files named as layercache names them (isTempName,
// isPartialName, isHashStateName, isBlobLockName), never the index and
// stats locks, never a directory (whatever its name) and never anything in
// one: whatever else is in ingest/ was put there by someone else, and is
// not Sweep's to remove. A live writer's temp file is younger than any
// sensible cutoff (callers use an hour), so Sweep does not race with
// writers in practice; if it did, the writer's rename would fail and it
// would report an error, never publish a partial blob. It returns how many
// files it removed.
func (p Path) Sweep(ctx context.Context, cutoff time.Time) (int, error) {
	dir := p.Join(IngestDir)
	if err := CheckDir(dir); err != nil {
		return 0, fmt.Errorf("sweeping: %w", err)
	}
	entries, err := fsutil.ReadDir(dir, true)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("sweeping %s: %w", dir, err)
	}
	removed := 0
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		name := e.Name()
		temp, lock := isTempName(name) || isPartialName(name) || isHashStateName(name), isBlobLockName(name)
		if !temp && !lock || e.IsDir() {
			continue // not a file of ours
		}
		fi, err := e.Info()
		if err != nil || fi.IsDir() || !fi.ModTime().Before(cutoff) {
			continue
		}
		path := p.Join(IngestDir, name)
		if lock {
			if fi.Mode().IsRegular() && removeUnheldLock(path) {
				removed++
			}
			continue
		}
		// unlink(2), not os.Remove: it never removes a directory, even
		// one made at this name since the entry was read.
		if syscall.Unlink(path) == nil {
			removed++
		}
	}
	return removed, nil
}

// removeUnheldLock removes the lock file at path if nobody holds it, and
// reports whether it did. It removes the file only while holding it, so a
// current holder keeps it. A process that opened the file just before the
// removal may lock the unlinked inode; the cost is at worst one duplicate
// download, never a wrong blob. Anything but a regular file at path (a
// FIFO, a symlink) is left for lock to replace.
func removeUnheldLock(path string) bool {
	f, err := fsutil.OpenRegular(path, os.O_RDONLY)
	if err != nil {
		return false
	}
	defer f.Close() // which releases the flock
	if flock(f, syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return false
	}
	// Another sweep may have removed the file since it was opened, and a
	// locker made a new one at its name: remove only the file held.
	held, err := f.Stat()
	if err != nil {
		return false
	}
	if cur, err := os.Lstat(path); err != nil || !os.SameFile(held, cur) {
		return false
	}
	return syscall.Unlink(path) == nil
}
