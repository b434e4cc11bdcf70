package layout

import (
	_ "crypto/sha256" // registers the hashes go-digest needs
	_ "crypto/sha512"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// ErrInvalidDigest is returned for a digest that is malformed, uses an
// algorithm other than sha256 or sha512, or has an encoded part that is not
// lowercase hex of the algorithm's exact length. Such a digest never becomes
// a path, so no input can name a file outside blobs/.
var ErrInvalidDigest = errors.New("invalid digest")

// Algorithms are the digest algorithms a layout stores, in the order Walk
// visits them.
var Algorithms = []digest.Algorithm{digest.SHA256, digest.SHA512}

// Validate checks d with go-digest's grammar and restricts it to the
// algorithms of Algorithms. Its error wraps ErrInvalidDigest and says why.
func Validate(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%w %q: %v", ErrInvalidDigest, string(d), err)
	}
	switch d.Algorithm() {
	case digest.SHA256, digest.SHA512:
	default:
		return fmt.Errorf("%w %q: algorithm %s is not supported (sha256, sha512)", ErrInvalidDigest, string(d), d.Algorithm())
	}
	// go-digest's per-algorithm pattern already pins lowercase hex of the
	// exact length; check again here so that this function alone guards
	// the path mapping below, whatever go-digest's version.
	enc := d.Encoded()
	if len(enc) != d.Algorithm().Size()*2 {
		return fmt.Errorf("%w %q: wrong length", ErrInvalidDigest, string(d))
	}
	for i := 0; i < len(enc); i++ {
		if c := enc[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w %q: not lowercase hex", ErrInvalidDigest, string(d))
		}
	}
	return nil
}

// BlobPath returns the path of the blob named by d: blobs/<alg>/<encoded>
// below the root. It validates d first and returns an error wrapping
// ErrInvalidDigest, and no path, for a digest that does not validate.
func (p Path) BlobPath(d digest.Digest) (string, error) {
	if err := Validate(d); err != nil {
		return "", err
	}
	return filepath.Join(string(p), BlobsDir, string(d.Algorithm()), d.Encoded()), nil
}

// AlgorithmDir returns blobs/<alg> below the root.
func (p Path) AlgorithmDir(alg digest.Algorithm) string {
	return filepath.Join(string(p), BlobsDir, string(alg))
}

// ParseBlobName returns the digest of the blob file called name in the
// folder of algorithm alg, or an error wrapping ErrInvalidDigest for a file
// that is not a blob's (such files are not the layout's and are left alone).
func ParseBlobName(alg digest.Algorithm, name string) (digest.Digest, error) {
	d := digest.NewDigestFromEncoded(alg, name)
	if err := Validate(d); err != nil {
		return "", err
	}
	return d, nil
}
