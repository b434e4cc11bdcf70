package remotecache

import (
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
)

// TagLockKey is tagLockKey, for tests that hold a tag's lock.
func TagLockKey(ref name.Reference) digest.Digest { return tagLockKey(ref) }

// SetTagWaitMax sets tagWaitMax and returns a func that restores it.
func SetTagWaitMax(d time.Duration) (restore func()) {
	old := tagWaitMax
	tagWaitMax = d
	return func() { tagWaitMax = old }
}

// Decompress is decompress, for tests of the decoders' bounds.
func Decompress(rc io.ReadCloser) (io.ReadCloser, error) { return decompress(rc) }
