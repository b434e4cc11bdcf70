package main

import (
	"bufio"
	stdgzip "compress/gzip"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// The ideals: what the machine does with the same files and no library in
// the way. They read the blob files of a populated store directly.

// idealBufSize is the read size of the ideal reads. 1 MiB is the store's
// own read size; 32 KiB to 4 MiB reads of a page-cached file hash at the
// same speed to within noise on the reference machine, so the ideal is
// not handicapped by its reads (the issue asks for ≥ 32 KiB).
const idealBufSize = 1 << 20

// consumerBufSize is how a caller of Compressed or Uncompressed reads:
// io.Copy into a writer with no ReadFrom (a hash.Hash, a tar extractor)
// uses the reader's WriteTo if it has one, and 32 KiB reads otherwise.
const consumerBufSize = 32 << 10

// blobFile is a layer's file in a store, with what it must hash to.
type blobFile struct {
	path   string
	digest v1.Hash // of the file
	diffID v1.Hash // of its gunzipped bytes
	size   int64
	usize  int64
}

// hashFile reads path with reads of bufSize and returns its sha256 digest.
func hashFile(path string, bufSize int) (v1.Hash, error) {
	f, err := os.Open(path)
	if err != nil {
		return v1.Hash{}, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, bufSize)
	for {
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return v1.Hash{}, err
		}
	}
	return sum(h), nil
}

func sum(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
}

// idealRead is the ideal verified read: open, read and sha256 every file,
// one after the other on one core, and check each digest.
func idealRead(files []blobFile) error {
	for _, f := range files {
		got, err := hashFile(f.path, idealBufSize)
		if err != nil {
			return err
		}
		if got != f.digest {
			return fmt.Errorf("%s: hashes to %s, want %s", f.path, got, f.digest)
		}
	}
	return nil
}

// idealReadParallel is the ideal verified read spread over n goroutines,
// one file at a time each: what the machine's cores can do together.
func idealReadParallel(files []blobFile, n int) error {
	g := make(chan blobFile)
	errs := make(chan error, n)
	for range n {
		go func() {
			var first error
			for f := range g {
				if err := idealRead([]blobFile{f}); err != nil && first == nil {
					first = err
				}
			}
			errs <- first
		}()
	}
	for _, f := range files {
		g <- f
	}
	close(g)
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// decoder opens a compressed stream: klauspost/compress/gzip (what the
// library uses) or the standard library's, or klauspost/compress/zstd.
type decoder func(io.Reader) (io.Reader, error)

func klauspostGunzip(r io.Reader) (io.Reader, error) { return kgzip.NewReader(r) }
func stdlibGunzip(r io.Reader) (io.Reader, error)    { return stdgzip.NewReader(r) }

// klauspostZstd is the zstd decoder as the library sets it up: decoding
// on the reading goroutine, the window bounded.
func klauspostZstd(r io.Reader) (io.Reader, error) {
	return zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20))
}

// idealUncompressed is the ideal verified uncompressed read: read, gunzip
// and sha256 the output of every file, checked against the diff ID. With
// alsoDigest it hashes the compressed bytes on the way too, and checks the
// digest: the same single pass, with both of the library's checks.
func idealUncompressed(files []blobFile, gunzip decoder, alsoDigest bool) error {
	buf := make([]byte, idealBufSize)
	for _, f := range files {
		if err := idealUncompressedFile(f, gunzip, alsoDigest, buf); err != nil {
			return err
		}
	}
	return nil
}

func idealUncompressedFile(f blobFile, gunzip decoder, alsoDigest bool, buf []byte) error {
	file, err := os.Open(f.path)
	if err != nil {
		return err
	}
	defer file.Close()
	var src io.Reader = file
	dh := sha256.New()
	if alsoDigest {
		src = io.TeeReader(file, dh)
	}
	br := bufio.NewReaderSize(src, idealBufSize)
	zr, err := gunzip(br)
	if err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	if c, ok := zr.(interface{ Close() }); ok {
		defer c.Close() // zstd's, which frees its buffers
	}
	uh := sha256.New()
	if _, err := io.CopyBuffer(uh, zr, buf); err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	if got := sum(uh); got != f.diffID {
		return fmt.Errorf("%s: uncompressed bytes hash to %s, want %s", f.path, got, f.diffID)
	}
	if alsoDigest {
		if _, err := io.CopyBuffer(io.Discard, br, buf); err != nil {
			return err
		}
		if got := sum(dh); got != f.digest {
			return fmt.Errorf("%s: hashes to %s, want %s", f.path, got, f.digest)
		}
	}
	return nil
}

// drain reads rc to its end as a consumer does (see consumerBufSize) and
// closes it, and returns how many bytes it read.
func drain(rc io.ReadCloser) (int64, error) {
	buf := make([]byte, consumerBufSize)
	n, err := io.CopyBuffer(writerOnly{io.Discard}, rc, buf)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// writerOnly hides io.Discard's ReadFrom, whose 8 KiB reads no real
// consumer makes.
type writerOnly struct{ io.Writer }
