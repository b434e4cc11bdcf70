package store

import (
	"errors"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/layout"
)

// Sentinel errors. Match them with errors.Is: every error the store returns
// wraps at most one of them (ErrReadOnly and ErrNoSpace sit beside the
// system error they stand for), and names the digest (and path) concerned.
var (
	// ErrNotFound is returned by Open, Get, Stat and Delete when the store
	// holds no blob with the digest.
	ErrNotFound = errors.New("blob not found")

	// ErrCorrupted is returned when a stored blob's bytes do not match its
	// digest (truncated, extended, bit-flipped, empty, or not a regular
	// file). By the time the caller sees it, the bad entry is removed, so
	// a retry fetches the blob afresh.
	ErrCorrupted = errors.New("corrupted blob")

	// ErrInvalidDigest is returned, before any file is touched, for a
	// digest that is malformed, uses an algorithm other than sha256 or
	// sha512, or is not lowercase hex of the exact length. It is the same
	// value as layout.ErrInvalidDigest.
	ErrInvalidDigest = layout.ErrInvalidDigest

	// ErrDigestMismatch is returned by PutVerified and Writer.Commit when
	// the data written does not hash to the expected digest or does not
	// have the expected size. Nothing is committed.
	ErrDigestMismatch = errors.New("digest mismatch")

	// ErrTooLarge is returned by Get and Inspect for a blob larger than
	// MaxBlobInMemory, before any of it is read. The blob is left in
	// place: it may be a whole layer, which Open streams.
	ErrTooLarge = errors.New("blob too large to read into memory")

	// ErrNotLayout is returned by Open for a path that is a file, or a
	// non-empty directory that is not an OCI image layout. It is the same
	// value as layout.ErrNotLayout.
	ErrNotLayout = layout.ErrNotLayout

	// ErrReadOnly is wrapped by every error of a method that could not
	// write to the cache because its file system is read-only (EROFS) or
	// the process lacks permission (EACCES, EPERM). The system error stays
	// in the chain beside it. Reads of a read-only cache still work.
	ErrReadOnly = diskerr.ErrReadOnly

	// ErrNoSpace is wrapped by every error of a method that could not
	// write to the cache because its disk is full (ENOSPC), a quota is
	// reached (EDQUOT) or the process's file size limit is (EFBIG). The
	// system error stays in the chain beside it. Nothing partial is
	// published.
	ErrNoSpace = diskerr.ErrNoSpace
)
