package layout

import (
	"errors"
	"io/fs"
	"syscall"
)

// IsReadOnly reports whether err means the layout cannot be written: a
// read-only mount (EROFS) or missing permission. Callers use it to degrade
// to a read-only cache instead of failing.
func IsReadOnly(err error) bool {
	return errors.Is(err, syscall.EROFS) || errors.Is(err, fs.ErrPermission)
}
