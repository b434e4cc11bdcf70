package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand"
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
	for name, mk := range readers {
		for _, n := range sizes {
			b := src[:n]
			if name == "oneByte" {
				b = src[:min(n, 3000)]
			}
			h := sha256.New()
			got, err := hashReadAhead(context.Background(), mk(b), h, int64(n))
			if err != nil || got != int64(len(b)) {
				t.Fatalf("%s, %d bytes: got %d bytes, %v", name, n, got, err)
			}
			if want := sha256.Sum256(b); !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatalf("%s, %d bytes: wrong hash", name, n)
			}
		}
	}
}

// A read error in the middle is returned, and the reader is not used
// after hashReadAhead returns.
func TestHashReadAhead_ReadError(t *testing.T) {
	boom := errors.New("boom")
	src := bytes.Repeat([]byte("x"), 8*aheadMin)
	r := &watchedReader{r: io.MultiReader(bytes.NewReader(src[:3*aheadMin]), iotest.ErrReader(boom))}
	n, err := hashReadAhead(context.Background(), r, sha256.New(), int64(len(src)))
	r.returned.Store(true)
	if !errors.Is(err, boom) {
		t.Fatalf("got %d bytes, %v; want the read error", n, err)
	}
	if n != 3*aheadMin {
		t.Errorf("hashed %d bytes before the error, want %d", n, 3*aheadMin)
	}
	if r.late.Load() {
		t.Error("the reader was read after hashReadAhead returned")
	}
}

// A cancelled context stops the hash, and the reader is not used after
// hashReadAhead returns.
func TestHashReadAhead_Cancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &watchedReader{r: infiniteReader{}}
	var reads atomic.Int64
	r.onRead = func() {
		if reads.Add(1) == 2*ctxEvery {
			cancel()
		}
	}
	_, err := hashReadAhead(ctx, r, sha256.New(), 1<<40)
	r.returned.Store(true)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if r.late.Load() {
		t.Error("the reader was read after hashReadAhead returned")
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
