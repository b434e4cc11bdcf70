package store_test

import (
	"crypto/sha256"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store/storetest"
)

// genBlock is the pattern genReader repeats: 1 MiB of pseudo-random bytes,
// an odd size away from the store's buffer so reads straddle it.
var genBlock = storetest.Blob(1234, 1<<20+13)

// genReader generates n bytes without holding them: large blobs for
// benchmarks and memory tests cost no memory of their own.
type genReader struct {
	n, off int64
}

func newGenReader(n int64) *genReader { return &genReader{n: n} }

func (r *genReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if rest := r.n - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	total := 0
	for len(p) > 0 {
		i := r.off % int64(len(genBlock))
		m := copy(p, genBlock[i:])
		p = p[m:]
		r.off += int64(m)
		total += m
	}
	return total, nil
}

// genDigest is the sha256 digest of the n bytes genReader generates.
func genDigest(tb testing.TB, n int64) digest.Digest {
	tb.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, newGenReader(n)); err != nil {
		tb.Fatal(err)
	}
	return digest.NewDigest(digest.SHA256, h)
}
