package main

import (
	"fmt"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// progressSink shows Warm's progress: bars on a terminal, one plain line
// per finished blob elsewhere (CI logs).
type progressSink interface {
	event(remotecache.Progress)
	wait()
}

func newProgress(w io.Writer, tty bool) progressSink {
	if tty {
		return &barProgress{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(40)), bars: map[digest.Digest]*mpb.Bar{}}
	}
	return &lineProgress{w: w}
}

// lineProgress prints a line when a blob is done.
type lineProgress struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineProgress) event(ev remotecache.Progress) {
	if !ev.Done {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case ev.Err != nil:
		fmt.Fprintf(l.w, "%s %s %s: failed: %s\n", ev.Kind, shortDigest(ev.Digest.String()), humanBytes(ev.Total), printable(ev.Err.Error()))
	case ev.Cached:
		fmt.Fprintf(l.w, "%s %s %s: cached, verified\n", ev.Kind, shortDigest(ev.Digest.String()), humanBytes(ev.Total))
	default:
		fmt.Fprintf(l.w, "%s %s %s: fetched\n", ev.Kind, shortDigest(ev.Digest.String()), humanBytes(ev.Total))
	}
}

func (l *lineProgress) wait() {}

// barProgress draws one bar per layer and a total bar.
type barProgress struct {
	mu    sync.Mutex
	p     *mpb.Progress
	bars  map[digest.Digest]*mpb.Bar
	total *mpb.Bar
	sum   int64
}

func (b *barProgress) event(ev remotecache.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bar, ok := b.bars[ev.Digest]
	if !ok {
		if b.total == nil {
			b.total = b.p.New(0, mpb.BarStyle(), mpb.BarPriority(1<<30),
				mpb.PrependDecorators(decor.Name("total", decor.WC{W: 20, C: decor.DindentRight})),
				mpb.AppendDecorators(decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")))
		}
		b.sum += ev.Total
		b.total.SetTotal(b.sum, false)
		bar = b.p.New(ev.Total, mpb.BarStyle(),
			mpb.PrependDecorators(decor.Name(shortDigest(ev.Digest.String()), decor.WC{W: 20, C: decor.DindentRight})),
			mpb.AppendDecorators(decor.OnComplete(decor.Counters(decor.SizeB1024(0), "% .1f / % .1f"), "done")))
		b.bars[ev.Digest] = bar
	}
	prev := bar.Current()
	bar.SetCurrent(ev.Complete)
	b.total.IncrInt64(ev.Complete - prev)
	if ev.Done {
		if ev.Err != nil {
			bar.Abort(false)
		} else {
			bar.SetTotal(ev.Total, true)
		}
	}
}

func (b *barProgress) wait() {
	b.mu.Lock()
	if b.total != nil {
		b.total.SetTotal(b.sum, true)
	}
	b.mu.Unlock()
	b.p.Wait()
}
