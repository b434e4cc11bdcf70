package store

import (
	"context"
	"hash"
	"io"
	"sync"
)

// Hashing a blob file is the cost of every verified read. A single
// goroutine alternates between read(2), which copies the bytes out of the
// page cache, and the hash. hashReadAhead overlaps the two: one goroutine
// reads ahead into a few small buffers while the caller hashes the ones
// already filled, so the verification runs at about the speed of the hash
// alone (bench/ row 1: 1.44–1.51 GB/s against 1.21 for read-then-hash on
// two cores).
//
// The buffers are small on purpose: four of 128 KiB stay in the CPU's
// caches between the copy and the hash. Four of 1 MiB measured slower than
// no read-ahead at all.
const (
	aheadChunk = 128 << 10
	aheadDepth = 4
	// aheadMin is the size below which a blob is hashed by one goroutine:
	// starting another costs more than it saves for manifests and configs.
	aheadMin = 4 * aheadChunk
	// ctxEvery is how many chunks are hashed between checks of the context.
	ctxEvery = 256
)

var aheadPool = sync.Pool{New: func() any { b := make([]byte, aheadChunk); return &b }}

type aheadChunkRead struct {
	b   *[]byte
	n   int
	err error
}

// hashReadAhead writes everything r returns into h, until io.EOF, and
// returns how many bytes that was. size is what the caller expects to
// read; it only chooses between one goroutine and two. The reading
// goroutine has stopped using r by the time hashReadAhead returns, so the
// caller may seek or close r then.
func hashReadAhead(ctx context.Context, r io.Reader, h hash.Hash, size int64) (int64, error) {
	if size < aheadMin {
		return hashSerial(ctx, r, h)
	}
	free := make(chan *[]byte, aheadDepth)
	full := make(chan aheadChunkRead, aheadDepth)
	stop := make(chan struct{})
	for range aheadDepth {
		free <- aheadPool.Get().(*[]byte)
	}
	go func() {
		defer close(full)
		for {
			var b *[]byte
			select {
			case b = <-free:
			case <-stop:
				return
			}
			n, err := r.Read(*b)
			// full has room for every buffer, so this never blocks.
			full <- aheadChunkRead{b: b, n: n, err: err}
			if err != nil {
				return
			}
		}
	}()

	var (
		total int64
		err   error
		count int
	)
	for c := range full {
		h.Write((*c.b)[:c.n])
		total += int64(c.n)
		free <- c.b // room for every buffer: never blocks
		if c.err != nil {
			if c.err != io.EOF {
				err = c.err
			}
			break
		}
		if count++; count%ctxEvery == 0 {
			if err = ctx.Err(); err != nil {
				break
			}
		}
	}
	close(stop)
	// Wait for the reader to finish (it closes full), and give every
	// buffer back.
	for c := range full {
		aheadPool.Put(c.b)
	}
	for {
		select {
		case b := <-free:
			aheadPool.Put(b)
		default:
			return total, err
		}
	}
}

// hashSerial is hashReadAhead in one goroutine, for small blobs.
func hashSerial(ctx context.Context, r io.Reader, h hash.Hash) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	bp := aheadPool.Get().(*[]byte)
	defer aheadPool.Put(bp)
	buf := *bp
	var total int64
	for count := 1; ; count++ {
		n, err := r.Read(buf)
		h.Write(buf[:n])
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		if count%ctxEvery == 0 {
			if err := ctx.Err(); err != nil {
				return total, err
			}
		}
	}
}
