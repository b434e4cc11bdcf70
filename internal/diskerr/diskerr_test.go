package diskerr_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/ocibuild/layercache/internal/diskerr"
)

func TestReadOnly(t *testing.T) {
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
			if got := errors.Is(diskerr.Mark(tc.err), diskerr.ErrReadOnly); got != tc.want {
				t.Errorf("IsReadOnly(%v): got %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestNoSpace(t *testing.T) {
	tests := []struct {
		err    error
		want   bool
		reason string
	}{
		{syscall.ENOSPC, true, "a full disk"},
		{&fs.PathError{Op: "write", Path: "/cache/ingest/x", Err: syscall.EDQUOT}, true, "a quota, inside a PathError"},
		{fmt.Errorf("writing blob: %w", syscall.EFBIG), true, "a file size limit, wrapped"},
		{syscall.EROFS, false, "a read-only file system is not full"},
		{nil, false, "no error"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			if got := errors.Is(diskerr.Mark(tc.err), diskerr.ErrNoSpace); got != tc.want {
				t.Errorf("NoSpace(%v): got %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestMarkKeepsChainAndMessage(t *testing.T) {
	inner := &fs.PathError{Op: "open", Path: "/cache/ingest/x", Err: syscall.EROFS}
	err := diskerr.Mark(fmt.Errorf("writing blob: %w", inner))
	if got, want := err.Error(), "writing blob: open /cache/ingest/x: read-only file system"; got != want {
		t.Errorf("message: got %q, want %q", got, want)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe != inner {
		t.Errorf("errors.As(*fs.PathError): got %v, want %v", pe, inner)
	}
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("errors.Is(EROFS): got false, want true")
	}
	if again := diskerr.Mark(err); again != err {
		t.Errorf("Mark of a marked error: got a new error %v, want the same", again)
	}
}
