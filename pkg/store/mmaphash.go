package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"

	"github.com/opencontainers/go-digest"
)

// mmapWindow is how much of a blob is mapped at once while hashing it.
// Mapping in windows bounds the address space and resident set a huge
// layer takes; 64 MiB is large enough that mapping costs nothing next to
// hashing.
const mmapWindow = 64 << 20

// mmapMin is the smallest blob OpenVerified maps rather than reads:
// below it the map and unmap calls cost more than the copy they save.
const mmapMin = 1 << 20

// errNoMmap says the file could not be mapped; the caller reads instead.
var errNoMmap = errors.New("mmap unavailable")

// hashMapped hashes the first size bytes of f through memory maps, so
// that a verify-then-serve read (OpenVerified) copies each byte out of the
// page cache once, when serving, rather than twice. It returns errNoMmap
// if the file system cannot map files. A file truncated while mapped
// would raise SIGBUS; SetPanicOnFault turns that into a recovered error
// reported as corruption.
func hashMapped(ctx context.Context, f *os.File, size int64, d digest.Digest, path string) (err error) {
	h := d.Algorithm().Hash()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("blob %s (%s): %w: changed while being read (%v)", d, path, ErrCorrupted, r)
		}
	}()
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	for off := int64(0); off < size; off += mmapWindow {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(size-off, mmapWindow)
		m, err := syscall.Mmap(int(f.Fd()), off, int(n), syscall.PROT_READ, syscall.MAP_SHARED|syscall.MAP_POPULATE)
		if err != nil {
			if off == 0 {
				return errNoMmap
			}
			return fmt.Errorf("blob %s (%s): mapping: %w", d, path, err)
		}
		h.Write(m)
		if err := syscall.Munmap(m); err != nil {
			return fmt.Errorf("blob %s (%s): unmapping: %w", d, path, err)
		}
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		return corruptedError(d, path, size, got)
	}
	return nil
}
