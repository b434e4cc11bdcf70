// Package fsutil opens the files and folders of a layercache directory
// without ever blocking or following a link where it must not.
//
// Every file and folder that layercache opens in a layout is opened here,
// so that none of them blocks: a FIFO, a socket or a device restored from a
// CI cache's tar, or planted, stands where layercache expects one of its
// files or folders. open(2) of a FIFO for reading waits for a writer, which
// nothing can interrupt (neither a context nor SIGTERM: Go retries the
// system call), so a FIFO is never opened for I/O: a file is opened with
// O_NONBLOCK after an lstat found a regular file, and checked with fstat
// after; a folder is opened with O_DIRECTORY, which fails on anything but a
// directory. Blobs are opened by pkg/store's openFileNoTouch, by the same
// rules.
package fsutil

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
)

// ErrNotRegular is what OpenRegular and ReadSmallFile return for a
// symlink, a directory, a FIFO, a socket or a device at the path of one of
// the layout's files.
var ErrNotRegular = errors.New("not a regular file")

// OpenRegular opens the file at path with flag (os.O_CREATE makes it if it
// is missing). It never follows a symlink at path, never opens a FIFO, a
// socket or a device there, and never blocks: anything but a regular file
// gives an error wrapping ErrNotRegular that says what it is.
func OpenRegular(path string, flag int) (*os.File, error) {
	// lstat first, so that a FIFO or a device is never opened at all
	// (opening a device can have effects of its own).
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, NotRegular(path, fi.Mode())
	}
	// O_NOFOLLOW and O_NONBLOCK guard against a swap since the lstat.
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o644)
	switch {
	case errors.Is(err, syscall.ELOOP):
		return nil, NotRegular(path, fs.ModeSymlink)
	case errors.Is(err, syscall.EISDIR):
		return nil, NotRegular(path, fs.ModeDir)
	case errors.Is(err, syscall.ENXIO):
		return nil, fmt.Errorf("%s: %w: %v", path, ErrNotRegular, err)
	case err != nil:
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, NotRegular(path, fi.Mode())
	}
	return f, nil
}

func NotRegular(path string, mode fs.FileMode) error {
	return fmt.Errorf("%s: %w: it is %s", path, ErrNotRegular, Kind(mode))
}

// Kind names the type of a file mode for a person.
func Kind(mode fs.FileMode) string {
	switch {
	case mode&fs.ModeSymlink != 0:
		return "a symlink"
	case mode.IsDir():
		return "a directory"
	case mode&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case mode&fs.ModeSocket != 0:
		return "a socket"
	case mode&fs.ModeDevice != 0:
		return "a device"
	case mode.IsRegular():
		return "a regular file"
	}
	return "a " + mode.Type().String()
}

// ReadSmallFile reads the layout file at path, at most limit+1 bytes (so a
// caller can tell a file over the limit). It never follows a symlink at
// path and never blocks on a FIFO planted there: a hostile entry gives an
// error wrapping ErrNotRegular, and its target is never read.
func ReadSmallFile(path string, limit int64) ([]byte, error) {
	f, err := OpenRegular(path, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit+1))
}

// OpenDir opens the directory at path for reading its entries, syncing it
// or locking it. O_DIRECTORY makes open(2) fail on a FIFO or anything else
// but a directory, rather than wait; with noFollow, a symlink at path fails
// too (the cache root may be a symlink, the layout's own folders may not).
func OpenDir(path string, noFollow bool) (*os.File, error) {
	flag := os.O_RDONLY | syscall.O_DIRECTORY | syscall.O_NONBLOCK
	if noFollow {
		flag |= syscall.O_NOFOLLOW
	}
	return os.OpenFile(path, flag, 0)
}

// ReadDir returns the entries of the folder at path sorted by name, as
// os.ReadDir does, but opens it with OpenDir.
func ReadDir(path string, noFollow bool) ([]fs.DirEntry, error) {
	f, err := OpenDir(path, noFollow)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := f.ReadDir(-1)
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return entries, err
}

// SyncDir fsyncs a directory, so that a rename into it survives a power
// loss. Anything but a directory at dir gives an error, never a wait.
func SyncDir(dir string) error {
	d, err := OpenDir(dir, false)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
