package layout

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/gofrs/flock"
	"github.com/opencontainers/go-digest"
)

// Suffixes of the files in ingest/. layercache creates nothing there but
// the temp files of CreateTemp and the lock files of LockBlob, LockIndex
// and UpdateStats (see isIngestName), and Sweep removes nothing else.
const (
	tempSuffix = ".tmp"
	lockSuffix = ".lock"
	// indexLockName is never removed: a lock file that is unlinked while
	// a process waits on it lets two processes hold "the" lock, and for
	// index.json that would lose refs.
	indexLockName = IndexFile + lockSuffix
)

// blobTempPrefix begins the names of the temp files of blobs being written.
const blobTempPrefix = "blob-"

// tempPrefix returns the prefix of the names of layercache's temp files
// that name begins with: blobs being written (pkg/store), and rewrites of
// index.json, oci-layout and the stats file (replaceFile, initIndex).
func tempPrefix(name string) (string, bool) {
	for _, prefix := range [...]string{blobTempPrefix, IndexFile + ".", LayoutFile + ".", StatsFile + "."} {
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

// isIngestName reports whether name is one that layercache gives the files
// it creates in ingest/.
func isIngestName(name string) bool {
	return isTempName(name) || isBlobLockName(name) || name == indexLockName || name == statsLockName
}

// lockPollInterval is how often a blocked Lock retries. flock(2) has no
// timed wait, so waiting with a context means polling; 20 ms is short next
// to any blob download a waiter waits for.
const lockPollInterval = 20 * time.Millisecond

// CreateTemp creates a new temporary file in ingest/ whose name is unique
// across processes (os.CreateTemp). pattern follows os.CreateTemp; the
// ".tmp" suffix is added if missing. So that Sweep recognises every file
// it makes, pattern must be "blob-*", or the name of a layout file
// (index.json, oci-layout, the stats file) followed by ".*"; any other
// pattern is refused.
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
	fl *flock.Flock
}

// Unlock releases the lock. It is safe to call more than once.
func (l *Lock) Unlock() error {
	if l == nil || l.fl == nil {
		return nil
	}
	err := l.fl.Unlock()
	l.fl.Close()
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

func (p Path) lock(ctx context.Context, name string) (*Lock, error) {
	path := p.Join(IngestDir, name)
	if err := CheckDir(p.Join(IngestDir)); err != nil {
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	// O_NOFOLLOW: a symlink planted at a lock file's name must not make
	// the lock create or open a file outside the cache. Such a link is
	// litter in ingest/ like any other, and nobody can hold a lock on it,
	// so it is removed and the lock file made afresh.
	newLock := func() *flock.Flock {
		return flock.New(path, flock.SetPermissions(0o644), flock.SetFlag(os.O_CREATE|os.O_RDONLY|syscall.O_NOFOLLOW))
	}
	fl := newLock()
	ok, err := fl.TryLockContext(ctx, lockPollInterval)
	if errors.Is(err, syscall.ELOOP) {
		fl.Close()
		if rerr := os.Remove(path); rerr == nil || errors.Is(rerr, fs.ErrNotExist) {
			fl = newLock()
			ok, err = fl.TryLockContext(ctx, lockPollInterval)
		}
	}
	if err == nil && !ok {
		err = ctx.Err()
	}
	if err != nil {
		fl.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return &Lock{fl: fl}, nil
}

// Sweep removes litter from ingest/ whose modification time is before
// cutoff: temporary files that a crashed or killed writer left behind, and
// per-digest lock files that nobody holds. It removes only files named as
// layercache names them (isTempName, isBlobLockName), never the index and
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
	entries, err := os.ReadDir(dir)
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
		temp, lock := isTempName(name), isBlobLockName(name)
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
	fl := flock.New(path, flock.SetFlag(os.O_RDONLY|syscall.O_NOFOLLOW))
	ok, err := fl.TryLock()
	if err != nil || !ok {
		fl.Close()
		return false
	}
	defer fl.Close()
	defer fl.Unlock()
	return syscall.Unlink(path) == nil
}
