package layout_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/ocibuild/layercache/layout"
)

func TestIsReadOnly(t *testing.T) {
	tests := []struct {
		err    error
		want   bool
		reason string
	}{
		{syscall.EROFS, true, "read-only file system"},
		{&fs.PathError{Op: "open", Path: "/cache/ingest/x", Err: syscall.EROFS}, true, "EROFS inside a PathError"},
		{fmt.Errorf("creating temp file: %w", &os.PathError{Op: "open", Path: "x", Err: syscall.EACCES}), true, "EACCES wrapped twice"},
		{syscall.EPERM, true, "EPERM is a permission error"},
		{fs.ErrPermission, true, "the fs sentinel itself"},
		{syscall.ENOSPC, false, "a full disk is not read-only"},
		{fs.ErrNotExist, false, "a missing file is not read-only"},
		{errors.New("permission denied"), false, "a look-alike message is not matched by text"},
		{nil, false, "no error"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			if got := layout.IsReadOnly(tc.err); got != tc.want {
				t.Errorf("IsReadOnly(%v): got %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
