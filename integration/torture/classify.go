package torture

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/ocibuild/layercache/internal/diskerr"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// Error classes of Classify.
const (
	ClassNotFound       = "not-found"       // store.ErrNotFound
	ClassCorrupted      = "corrupted"       // store.ErrCorrupted
	ClassDigestMismatch = "digest-mismatch" // store.ErrDigestMismatch: wrong bytes refused
	ClassRegistryBytes  = "registry-bytes"  // ggcr refused wrong bytes (its own checks)
	ClassInvalidDigest  = "invalid-digest"  // store.ErrInvalidDigest
	ClassOffline        = "offline"         // remotecache.ErrOffline
	ClassStatus         = "registry-status" // an HTTP error status from the registry
	ClassConnection     = "connection"      // a connection reset or a body cut short
	ClassNoSpace        = "no-space"        // ENOSPC, EDQUOT, EFBIG
	ClassReadOnly       = "read-only"       // EROFS, EACCES
	ClassTimeout        = "timeout"         // context.DeadlineExceeded
	ClassCanceled       = "canceled"        // context.Canceled
	ClassBadIndex       = "bad-index"       // layout.ErrBadIndex
	ClassOther          = "other"           // anything else: undocumented
)

// Classify names the documented error class err belongs to, or
// ClassOther.
func Classify(err error) string {
	var terr *transport.Error
	var nerr net.Error
	msg := err.Error()
	// Marked here too: an error from outside the store (the CLI's own
	// files, say) holds the system error alone.
	disk := diskerr.Mark(err)
	switch {
	case errors.Is(err, store.ErrCorrupted):
		return ClassCorrupted
	case errors.Is(err, store.ErrDigestMismatch):
		return ClassDigestMismatch
	case errors.Is(err, store.ErrNotFound):
		return ClassNotFound
	case errors.Is(err, store.ErrInvalidDigest):
		return ClassInvalidDigest
	case errors.Is(err, remotecache.ErrOffline):
		return ClassOffline
	case errors.Is(err, layout.ErrBadIndex):
		return ClassBadIndex
	case errors.Is(disk, store.ErrNoSpace):
		return ClassNoSpace
	case errors.Is(disk, store.ErrReadOnly):
		return ClassReadOnly
	case errors.Is(err, context.DeadlineExceeded):
		return ClassTimeout
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	case errors.As(err, &terr):
		return ClassStatus
	case strings.Contains(msg, "error verifying"), strings.Contains(msg, "does not match requested digest"),
		strings.Contains(msg, "does not match expected size"):
		return ClassRegistryBytes
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.As(err, &nerr):
		return ClassConnection
	}
	return ClassOther
}

// RegistryFault reports whether class is what a misbehaving registry
// causes: an error status, a cut connection, or wrong bytes refused.
func RegistryFault(class string) bool {
	switch class {
	case ClassStatus, ClassConnection, ClassDigestMismatch, ClassRegistryBytes:
		return true
	}
	return false
}
