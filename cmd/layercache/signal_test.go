package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ocibuild/layercache/layout"
)

// TestPut_SignalEndsBlockedStdinRead runs `layercache put -` as its own
// process, reading a pipe that never closes (as `sleep 8 | layercache put
// -` does), and sends it SIGINT or SIGTERM while it waits for input. It
// must stop reading at once, exit with 128 plus the signal's number, as a
// shell reports a process the signal ended, and leave no temp file in
// ingest/. The signal goes only once put's temp file exists, so the
// process has its signal handler by then; the deadlines only turn a hang
// into a failure.
func TestPut_SignalEndsBlockedStdinRead(t *testing.T) {
	t.Parallel()
	// testscript.Main (TestMain) put this test binary on PATH as
	// layercache, which then runs main.
	bin, err := exec.LookPath("layercache")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
	}{
		{syscall.SIGINT, 130},
		{syscall.SIGTERM, 143},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "cache")
			stdin, feed, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer feed.Close()
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, "--cache-dir", dir, "put", "-")
			cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			stdin.Close()
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			defer func() {
				cmd.Process.Kill()
				<-done
			}()
			if _, err := feed.Write([]byte("some input, and more to come")); err != nil {
				t.Fatal(err)
			}

			ingest := filepath.Join(dir, layout.IngestDir)
			deadline := time.Now().Add(30 * time.Second)
			for len(tempFiles(t, ingest)) == 0 {
				select {
				case <-done:
					t.Fatalf("put exited before it was signalled: %v\n%s", cmd.ProcessState, stderr.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatal("put made no temp file in 30 s")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("put still runs 30 s after %v, blocked on its open stdin", tc.sig)
			}
			if got := cmd.ProcessState.ExitCode(); got != tc.code {
				t.Errorf("exit %d (%v), want %d", got, cmd.ProcessState, tc.code)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
			if msg, want := stderr.String(), "layercache: put -: "+(signalError{tc.sig}).Error()+"\n"; msg != want {
				t.Errorf("stderr = %q, want %q", msg, want)
			}
			if left := tempFiles(t, ingest); len(left) > 0 {
				t.Errorf("put left %v in ingest/", left)
			}
		})
	}
}

// tempFiles lists the temp files in the ingest directory dir, which may
// not exist yet.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestInterruptible_EndsBlockedRead checks the reader that put and clear
// read stdin through: a Read blocked on its source returns the context's
// error once the context is done, and bytes before that pass through.
func TestInterruptible_EndsBlockedRead(t *testing.T) {
	t.Parallel()
	src, feed := io.Pipe() // a source that blocks until fed
	defer feed.Close()     // lets the copying goroutine end
	ctx, cancel := context.WithCancel(t.Context())
	r := interruptible(ctx, src)

	go feed.Write([]byte("abc"))
	buf := make([]byte, 8)
	if n, err := io.ReadAtLeast(r, buf, 3); err != nil || string(buf[:n]) != "abc" {
		t.Fatalf("first read: got (%q, %v), want abc", buf[:n], err)
	}
	type result struct {
		n   int
		err error
	}
	got := make(chan result, 1)
	go func() {
		n, err := r.Read(buf)
		got <- result{n, err}
	}()
	cancel()
	select {
	case res := <-got:
		if res.n != 0 || !errors.Is(res.err, context.Canceled) {
			t.Errorf("read after cancel: got (%d, %v), want (0, context.Canceled)", res.n, res.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("read still blocked 30 s after its context was cancelled")
	}
}
