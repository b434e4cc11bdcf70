package remotecache

import (
	"errors"
	"syscall"
)

// isNoSpace reports whether err means the cache's disk is full (or the
// process hit its file size limit).
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG)
}
