package store

import (
	"context"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
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

// hashing counts a store's hashes in flight, so that each chooses how
// to read as it goes. A read-ahead goroutine helps a hash that has a core
// to spare: one blob verified while the others are idle (a pull's layer,
// a GET of serve, the last blob of a Warm). When the hashes in flight
// already give every core one (Warm and VerifyAll verify blobs side by
// side), a second goroutine per hash only moves each chunk from the core
// that copied it to the core that hashes it, and makes one hash run
// ahead of the others, so that they end apart and leave a core idle at
// the end: there, each hash reads and hashes on its own goroutine, as the
// ideal read does (bench/ row 9).
type hashing struct{ n atomic.Int32 }

func (c *hashing) start() { c.n.Add(1) }
func (c *hashing) end()   { c.n.Add(-1) }

// spare reports whether a hash in flight may read ahead: whether the
// hashes in flight take at most half the cores (a read-ahead hash keeps
// about one and a fraction busy).
func (c *hashing) spare() bool {
	return int(c.n.Load())*2 <= runtime.GOMAXPROCS(0)
}

// alwaysSpare reads ahead whatever else runs.
func alwaysSpare() bool { return true }

var aheadPool = sync.Pool{New: func() any { b := make([]byte, aheadChunk); return &b }}

type aheadChunkRead struct {
	b   *[]byte
	n   int
	err error
}

// serialStretch is how many chunks a hash reads on its own goroutine
// before it asks again whether it may read ahead (1 MiB).
const serialStretch = 8

// hashReadAhead writes everything r returns into h, until io.EOF, and
// returns how many bytes that was. While spare reports a core to spare, a
// second goroutine reads ahead (it is asked after every chunk); otherwise
// the caller's goroutine reads and hashes, and asks again every
// serialStretch chunks. size is what the caller expects to read: below
// aheadMin, one goroutine does it all. The reading goroutine has stopped
// using r by the time hashReadAhead returns, so the caller may seek or
// close r then.
func hashReadAhead(ctx context.Context, r io.Reader, h hash.Hash, size int64, spare func() bool) (int64, error) {
	if size < aheadMin {
		return hashSerial(ctx, r, h)
	}
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var n int64
		var done bool
		var err error
		if spare() {
			n, done, err = hashAhead(ctx, r, h, spare)
		} else {
			n, done, err = hashChunks(r, h, serialStretch)
		}
		total += n
		if done || err != nil {
			return total, err
		}
	}
}

// hashAhead hashes what a second goroutine reads from r, until io.EOF
// (done), an error, or spare reports no core to spare; then it hashes
// what was read already, in order, and returns once the reading
// goroutine has stopped.
func hashAhead(ctx context.Context, r io.Reader, h hash.Hash, spare func() bool) (total int64, done bool, err error) {
	free := make(chan *[]byte, aheadDepth)
	full := make(chan aheadChunkRead, aheadDepth)
	stop := make(chan struct{})
	for range aheadDepth {
		free <- aheadPool.Get().(*[]byte)
	}
	go func() {
		defer close(full)
		for {
			select {
			case <-stop:
				return
			default:
			}
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

	stopped := false
	halt := func() {
		if !stopped {
			close(stop)
			stopped = true
		}
	}
	count := 0
	// Every chunk read is hashed, in order, until the end or an error,
	// even after stop: the next stretch reads on from where the reading
	// goroutine left r. full is closed once that goroutine has returned.
	for c := range full {
		if !done && err == nil {
			h.Write((*c.b)[:c.n])
			total += int64(c.n)
			switch {
			case c.err == io.EOF:
				done = true
			case c.err != nil:
				err = c.err
			}
		}
		free <- c.b // room for every buffer: never blocks
		if done || err != nil {
			halt()
			continue
		}
		if count++; count%ctxEvery == 0 {
			if err = ctx.Err(); err != nil {
				halt()
				continue
			}
		}
		if !spare() {
			halt()
		}
	}
	for {
		select {
		case b := <-free:
			aheadPool.Put(b)
		default:
			return total, done, err
		}
	}
}

// hashChunks reads and hashes up to k chunks of r on the caller's
// goroutine; done is io.EOF.
func hashChunks(r io.Reader, h hash.Hash, k int) (total int64, done bool, err error) {
	bp := aheadPool.Get().(*[]byte)
	defer aheadPool.Put(bp)
	buf := *bp
	for range k {
		n, err := r.Read(buf)
		h.Write(buf[:n])
		total += int64(n)
		if err == io.EOF {
			return total, true, nil
		}
		if err != nil {
			return total, false, err
		}
	}
	return total, false, nil
}

// hashSerial is hashReadAhead in one goroutine, for small blobs.
func hashSerial(ctx context.Context, r io.Reader, h hash.Hash) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var total int64
	for {
		n, done, err := hashChunks(r, h, ctxEvery)
		total += n
		if done || err != nil {
			return total, err
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}
