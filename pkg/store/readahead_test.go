package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"testing/iotest"
)

// hashReadAhead gives the same hash and count as a plain read of every
// size around its buffer and threshold sizes, with readers that return
// short reads and data along with io.EOF.
func TestHashReadAhead_Sizes(t *testing.T) {
	src := make([]byte, 3*aheadMin+5)
	rand.New(rand.NewSource(1)).Read(src)
	sizes := []int{0, 1, aheadChunk - 1, aheadChunk, aheadMin - 1, aheadMin, aheadMin + 1,
		aheadDepth*aheadChunk*2 + 7, len(src)}
	readers := map[string]func([]byte) io.Reader{
		"plain":   func(b []byte) io.Reader { return bytes.NewReader(b) },
		"half":    func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
		"dataEOF": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
		"oneByte": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b[:min(len(b), 3000)])) },
	}
	for sname, spare := range spares {
		for name, mk := range readers {
			for _, n := range sizes {
				b := src[:n]
				if name == "oneByte" {
					b = src[:min(n, 3000)]
				}
				h := sha256.New()
				got, err := hashReadAhead(context.Background(), mk(b), h, int64(n), spare())
				if err != nil || got != int64(len(b)) {
					t.Fatalf("%s, %s, %d bytes: got %d bytes, %v", sname, name, n, got, err)
				}
				if want := sha256.Sum256(b); !bytes.Equal(h.Sum(nil), want[:]) {
					t.Fatalf("%s, %s, %d bytes: wrong hash", sname, name, n)
				}
			}
		}
	}
}

// spares are the answers a hash may get, over its life, to whether it
// may read ahead: each gives a new spare func.
var spares = map[string]func() func() bool{
	// A hash alone on its cores.
	"always": func() func() bool { return alwaysSpare },
	// Every core has a hash.
	"never": func() func() bool { return func() bool { return false } },
	// Hashes start and end around it: it starts and stops reading
	// ahead again and again, and what the reading goroutine read
	// before it stopped is hashed in order.
	"changing": func() func() bool {
		var i int
		return func() bool { i++; return i%3 != 0 }
	},
}

// A read error in the middle is returned, and the reader is not used
// after hashReadAhead returns.
func TestHashReadAhead_ReadError(t *testing.T) {
	for sname, spare := range spares {
		boom := errors.New("boom")
		src := bytes.Repeat([]byte("x"), 8*aheadMin)
		r := &watchedReader{r: io.MultiReader(bytes.NewReader(src[:3*aheadMin]), iotest.ErrReader(boom))}
		n, err := hashReadAhead(context.Background(), r, sha256.New(), int64(len(src)), spare())
		r.returned.Store(true)
		if !errors.Is(err, boom) {
			t.Fatalf("%s: got %d bytes, %v; want the read error", sname, n, err)
		}
		if n != 3*aheadMin {
			t.Errorf("%s: hashed %d bytes before the error, want %d", sname, n, 3*aheadMin)
		}
		if r.late.Load() {
			t.Errorf("%s: the reader was read after hashReadAhead returned", sname)
		}
	}
}

// A cancelled context stops the hash, and the reader is not used after
// hashReadAhead returns.
func TestHashReadAhead_Cancel(t *testing.T) {
	for sname, spare := range spares {
		ctx, cancel := context.WithCancel(context.Background())
		r := &watchedReader{r: infiniteReader{}}
		var reads atomic.Int64
		r.onRead = func() {
			if reads.Add(1) == 2*ctxEvery {
				cancel()
			}
		}
		_, err := hashReadAhead(ctx, r, sha256.New(), 1<<40, spare())
		r.returned.Store(true)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: got %v, want context.Canceled", sname, err)
		}
		if r.late.Load() {
			t.Errorf("%s: the reader was read after hashReadAhead returned", sname)
		}
	}
}

type watchedReader struct {
	r        io.Reader
	onRead   func()
	returned atomic.Bool
	late     atomic.Bool
}

func (w *watchedReader) Read(p []byte) (int, error) {
	if w.returned.Load() {
		w.late.Store(true)
	}
	if w.onRead != nil {
		w.onRead()
	}
	return w.r.Read(p)
}

type infiniteReader struct{}

func (infiniteReader) Read(p []byte) (int, error) { return len(p), nil }

// A hash may read ahead while the hashes in flight, itself included,
// take at most half the cores.
func TestHashing_SpareWithinHalfTheCores(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	var c hashing
	var got []bool
	for range 3 {
		c.start()
		got = append(got, c.spare())
	}
	if want := []bool{true, true, false}; !slices.Equal(got, want) {
		t.Errorf("on 4 cores, with 1, 2 and 3 hashes in flight: spare %v, want %v", got, want)
	}
	c.end()
	if !c.spare() {
		t.Error("with 2 hashes left in flight on 4 cores, none may read ahead")
	}
	runtime.GOMAXPROCS(1)
	var one hashing
	if one.start(); one.spare() {
		t.Error("on one core, a hash reads ahead")
	}
}
