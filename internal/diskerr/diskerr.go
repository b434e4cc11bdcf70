// Package diskerr classifies file-system errors that mean a cache cannot be
// written: a read-only file system or missing permission (ErrReadOnly), and
// a full disk, a quota or a file size limit (ErrNoSpace). The sentinels are
// defined here, below layout and pkg/store, so that both layers mark their
// errors with the same values; pkg/store re-exports them.
package diskerr

import (
	"errors"
	"io/fs"
	"syscall"
)

var (
	// ErrReadOnly marks an error of writing to a read-only file system
	// (EROFS) or without permission (EACCES, EPERM).
	ErrReadOnly = errors.New("cache is read-only")

	// ErrNoSpace marks an error of writing to a full disk (ENOSPC), past a
	// quota (EDQUOT) or past the process's file size limit (EFBIG).
	ErrNoSpace = errors.New("no space left for the cache")
)

// kind returns the sentinel that err's chain matches, or nil.
func kind(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrReadOnly), errors.Is(err, ErrNoSpace):
		return nil // marked already
	case errors.Is(err, syscall.EROFS), errors.Is(err, fs.ErrPermission):
		return ErrReadOnly
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return ErrNoSpace
	}
	return nil
}

// Mark returns err so that errors.Is matches ErrReadOnly or ErrNoSpace when
// its chain holds the system error they stand for. The message is err's
// own, and errors.Is and errors.As still find everything err wraps. Any
// other error, an error marked already and nil are returned as they are.
func Mark(err error) error {
	k := kind(err)
	if k == nil {
		return err
	}
	return &marked{kind: k, err: err}
}

// MarkAt replaces *errp with Mark(*errp), for a deferred call at the
// boundary of a function with a named error result.
func MarkAt(errp *error) { *errp = Mark(*errp) }

// marked is an error whose chain holds both a sentinel and the original
// error, with the original's message.
type marked struct {
	kind error
	err  error
}

func (e *marked) Error() string   { return e.err.Error() }
func (e *marked) Unwrap() []error { return []error{e.err, e.kind} }
