package store

import (
	"os"
	"sync"
	"sync/atomic"
)

// pipeDepth is how many chunks may wait for the file-writing goroutine,
// and pipeChunk their size. Eight 256 KiB chunks absorb the jitter
// between a download and the disk; a Writer holds at most 2.5 MiB of them,
// recycled through its own free list while it writes, and handed to
// chunkPool when it is done, so that the next Writer (Warm runs many at
// once) starts with chunks that are already mapped instead of fresh
// memory for the GC to clear and collect.
const (
	pipeDepth = 8
	pipeChunk = 256 << 10
)

var chunkPool = sync.Pool{New: func() any { return new([pipeChunk]byte) }}

// pipeFile writes to a file from a goroutine of its own, so that on a
// miss the copy into the page cache overlaps the download and the hash
// instead of following them: with two cores a cold pull through the
// cache costs little more than a pull without it (see bench/). Write
// copies p, so the caller may reuse it at once; the first write error is
// kept and returned by later Writes and by wait.
type pipeFile struct {
	f    *os.File
	work chan []byte
	free chan []byte
	done chan struct{}

	mu  sync.Mutex
	err error

	// written counts the bytes the file took, so that a hash state is
	// saved only for bytes that are in the file (Writer.saveHashState).
	written atomic.Int64

	cur    []byte // being gathered by Write; owned by the writer
	closed bool
}

func newPipeFile(f *os.File) *pipeFile {
	p := &pipeFile{f: f, work: make(chan []byte, pipeDepth), free: make(chan []byte, pipeDepth+2), done: make(chan struct{})}
	go p.loop()
	return p
}

func (p *pipeFile) loop() {
	defer close(p.done)
	for b := range p.work {
		if p.failed() != nil {
			p.put(b)
			continue
		}
		n, err := p.f.Write(b)
		p.written.Add(int64(n))
		if err != nil {
			p.mu.Lock()
			p.err = err
			p.mu.Unlock()
		}
		p.put(b)
	}
}

func (p *pipeFile) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Write queues a copy of b. Small writes are gathered into 256 KiB
// chunks, so the file sees few, large writes whatever the caller's read
// size. It returns an earlier write's error, if any.
func (p *pipeFile) Write(b []byte) error {
	for len(b) > 0 {
		if err := p.failed(); err != nil {
			return err
		}
		if p.cur == nil {
			p.cur = p.get()
		}
		n := copy(p.cur[len(p.cur):cap(p.cur)], b)
		p.cur = p.cur[:len(p.cur)+n]
		b = b[n:]
		if len(p.cur) == cap(p.cur) {
			p.work <- p.cur
			p.cur = nil
		}
	}
	return p.failed()
}

// spare returns the chunk being gathered, with room at its end, for a
// caller that reads into it directly (Writer.ReadFrom). It must hand the
// chunk back with filled before any other call.
func (p *pipeFile) spare() []byte {
	if p.cur == nil {
		p.cur = p.get()
	}
	return p.cur
}

// filled takes back the chunk spare returned, now holding b (the same
// array, longer), and queues it once it is full.
func (p *pipeFile) filled(b []byte) {
	p.cur = b
	if len(b) == cap(b) {
		p.work <- b
		p.cur = nil
	}
}

// wait writes what is gathered, lets every queued write finish and
// returns the first error. The pipe cannot be written to afterwards.
func (p *pipeFile) wait() error {
	if !p.closed {
		p.closed = true
		if len(p.cur) > 0 {
			p.work <- p.cur
		} else if p.cur != nil {
			p.put(p.cur)
		}
		p.cur = nil
		close(p.work)
	}
	<-p.done
	// Every chunk is back on the free list (or dropped): lend them on.
	for {
		select {
		case b := <-p.free:
			chunkPool.Put((*[pipeChunk]byte)(b[:pipeChunk]))
		default:
			return p.failed()
		}
	}
}

// get returns an empty chunk from the free list, or from chunkPool.
func (p *pipeFile) get() []byte {
	select {
	case b := <-p.free:
		return b[:0]
	default:
		return chunkPool.Get().(*[pipeChunk]byte)[:0]
	}
}

// put returns a chunk to the free list, or drops it if the list is full.
func (p *pipeFile) put(b []byte) {
	select {
	case p.free <- b:
	default:
	}
}
