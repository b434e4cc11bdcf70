package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"
)

// The warm-hit figures are reads from the page cache, but the page cache
// does not keep everything: memory pressure, or a proactive reclaimer
// (the reference machine runs DAMON with a pageout scheme for memory
// untouched for a minute), evicts files the harness read a while ago. So
// before each warm-hit run the harness faults the files it is about to
// read back into the page cache (untimed), and it counts the bytes each
// timed run still read from the disk (ru_inblock), which the report shows.

// cacheFiles makes sure the files at paths, and the regular files under
// the directories among them, are wholly in the page cache, reading those
// that are not.
func cacheFiles(paths ...string) error {
	for _, p := range paths {
		err := filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			resident, err := isResident(path)
			if err != nil || resident {
				return err
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.CopyBuffer(writerOnly{io.Discard}, f, make([]byte, 1<<20))
			return err
		})
		if err != nil {
			return fmt.Errorf("loading into the page cache: %w", err)
		}
	}
	return nil
}

// isResident reports whether every page of the file at path is in the
// page cache (mincore(2) of a read-only mapping; nothing is read).
func isResident(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return true, err
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return false, err
	}
	defer syscall.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	_, _, errno := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return false, errno
	}
	for _, v := range vec {
		if v&1 == 0 {
			return false, nil
		}
	}
	return true, nil
}

// diskReadBytes is how many bytes the harness process and its finished
// children have read from block devices so far (ru_inblock counts
// 512-byte blocks).
func diskReadBytes() int64 {
	var self, children syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	return (self.Inblock + children.Inblock) * 512
}
