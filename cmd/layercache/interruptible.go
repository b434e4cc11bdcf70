package main

import (
	"context"
	"io"
)

// interruptible returns a reader of r whose Read returns ctx's error as
// soon as ctx is done, even while a Read of r blocks: stdin may be a pipe
// whose writer neither writes nor closes (`sleep 60 | layercache put -`)
// or a terminal nobody types on, and a read(2) of either waits for input
// whatever the signals. Reads of r happen in a goroutine that copies into
// an io.Pipe; once ctx is done, that goroutine ends at its next write,
// after r's blocked Read returns, if ever: a command that was cancelled
// exits without waiting for it.
func interruptible(ctx context.Context, r io.Reader) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		// Put reads 256 KiB at a time; hand it as much per read.
		// struct{ io.Reader } hides r's WriteTo, which would pick its
		// own buffer.
		_, err := io.CopyBuffer(pw, struct{ io.Reader }{r}, make([]byte, 256<<10))
		pw.CloseWithError(err) // nil: the reader sees io.EOF
	}()
	// Closing the read side wakes a Read blocked on the pipe, and makes
	// the copying goroutine's next write fail.
	context.AfterFunc(ctx, func() { pr.CloseWithError(ctx.Err()) })
	return ctxReader{ctx, pr}
}

// ctxReader reads from the pipe of interruptible. A Read that the closing
// of the pipe ended returns ctx's error rather than io.ErrClosedPipe.
type ctxReader struct {
	ctx context.Context
	pr  *io.PipeReader
}

func (r ctxReader) Read(p []byte) (int, error) {
	n, err := r.pr.Read(p)
	if err != nil {
		if cerr := r.ctx.Err(); cerr != nil {
			return n, cerr
		}
	}
	return n, err
}
