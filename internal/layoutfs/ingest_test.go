package layoutfs_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
)

func TestCreateTemp(t *testing.T) {
	p := newLayout(t)
	tests := []struct {
		pattern    string
		wantPrefix string
		reason     string
	}{
		{"blob-*", "blob-", "the .tmp suffix is added so Sweep recognises the file"},
		{"index.json.*.tmp", "index.json.", "a pattern that has the suffix keeps one"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			f, err := p.CreateTemp(tc.pattern)
			if err != nil {
				t.Fatal(err)
			}
			defer os.Remove(f.Name())
			defer f.Close()
			if got, want := filepath.Dir(f.Name()), p.Join(layoutfs.IngestDir); got != want {
				t.Errorf("dir: got %q, want %q", got, want)
			}
			base := filepath.Base(f.Name())
			if !strings.HasPrefix(base, tc.wantPrefix) || !strings.HasSuffix(base, ".tmp") || strings.HasSuffix(base, ".tmp.tmp") {
				t.Errorf("name: got %q, want %s*.tmp", base, tc.wantPrefix)
			}
		})
	}
}

// CreateTemp makes only names that Sweep recognises as its own, so it
// refuses any other pattern and creates nothing.
func TestCreateTemp_RefusesForeignPattern(t *testing.T) {
	p := newLayout(t)
	for _, pattern := range []string{"data-*", "*", "blob-*-x", "blob-**", "index.json*", "oci-layout.*.part"} {
		if f, err := p.CreateTemp(pattern); err == nil {
			f.Close()
			t.Errorf("CreateTemp(%q) made %s, which Sweep would never remove", pattern, f.Name())
		}
	}
	entries, err := os.ReadDir(p.Join(layoutfs.IngestDir))
	if err != nil || len(entries) != 0 {
		t.Errorf("ingest/ after refused CreateTemp calls: %d entries (%v), want none", len(entries), err)
	}
}

func TestCreateTemp_IngestRemovedByHand(t *testing.T) {
	p := newLayout(t)
	if err := os.RemoveAll(p.Join(layoutfs.IngestDir)); err != nil {
		t.Fatal(err)
	}
	f, err := p.CreateTemp("blob-*")
	if err != nil {
		t.Fatalf("CreateTemp after ingest/ was removed: %v", err)
	}
	f.Close()
	if got, want := filepath.Dir(f.Name()), p.Join(layoutfs.IngestDir); got != want {
		t.Errorf("dir: got %q, want %q", got, want)
	}
}

func TestCreateTemp_Unique(t *testing.T) {
	p := newLayout(t)
	seen := map[string]bool{}
	for range 100 {
		f, err := p.CreateTemp("blob-*")
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if seen[f.Name()] {
			t.Fatalf("CreateTemp returned %s twice", f.Name())
		}
		seen[f.Name()] = true
	}
}

var (
	digestA = digest.FromString("a")
	digestB = digest.FromString("b")
)

func lockName(d digest.Digest) string {
	return string(d.Algorithm()) + "-" + d.Encoded() + ".lock"
}

func TestLockBlob_Excludes(t *testing.T) {
	p := newLayout(t)
	l, err := p.LockBlob(t.Context(), digestA)
	if err != nil {
		t.Fatal(err)
	}
	if !testutil.Exists(t, p.Join(layoutfs.IngestDir, lockName(digestA))) {
		t.Errorf("lock file %s not in ingest/", lockName(digestA))
	}

	// A second holder of the same digest waits until its context ends.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if l2, err := p.LockBlob(ctx, digestA); !errors.Is(err, context.DeadlineExceeded) {
		l2.Unlock()
		t.Fatalf("second LockBlob: got %v, want context.DeadlineExceeded", err)
	}

	// Another digest is not excluded.
	lb, err := p.LockBlob(t.Context(), digestB)
	if err != nil {
		t.Fatalf("LockBlob of another digest: %v", err)
	}
	lb.Unlock()

	// A waiter gets the lock once it is released.
	got := make(chan error, 1)
	go func() {
		l2, err := p.LockBlob(context.Background(), digestA)
		if err == nil {
			l2.Unlock()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("waiter got the lock while it was held (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("waiter: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not get the released lock")
	}
}

func TestLockBlob_CancelledContext(t *testing.T) {
	p := newLayout(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.LockBlob(ctx, digestA); !errors.Is(err, context.Canceled) {
		t.Errorf("LockBlob: got %v, want context.Canceled", err)
	}
}

func TestLock_UnlockNil(t *testing.T) {
	var l *layoutfs.Lock
	if err := l.Unlock(); err != nil {
		t.Errorf("nil Unlock: got %v, want nil", err)
	}
}

// TestLockBlob_Process holds a blob lock in a child process: the parent
// cannot take it, Sweep does not remove it, and once the child is killed
// with SIGKILL the kernel releases it and the parent gets it at once:
// without waiting at all, not after some stale-lock delay.
func TestLockBlob_Process(t *testing.T) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		l, err := layoutfs.Path(dir).LockBlob(context.Background(), digestA)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Unlock()
		testutil.WriteFile(t, filepath.Join(os.Getenv(childSyncEnv), "locked"), "")
		time.Sleep(time.Minute) // until the parent kills us
		return
	}
	p := newLayout(t)
	syncDir := t.TempDir()
	c := testutil.StartChild(t, t.Name(), childDirEnv+"="+p.String(), childSyncEnv+"="+syncDir)
	testutil.WaitFile(t, filepath.Join(syncDir, "locked"), time.Minute)

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if l, err := p.LockBlob(ctx, digestA); !errors.Is(err, context.DeadlineExceeded) {
		l.Unlock()
		t.Fatalf("LockBlob held by another process: got %v, want context.DeadlineExceeded", err)
	}

	lockPath := p.Join(layoutfs.IngestDir, lockName(digestA))
	setAge(t, lockPath, 2*time.Hour)
	if _, err := p.Sweep(t.Context(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !testutil.Exists(t, lockPath) {
		t.Fatal("Sweep removed a lock held by another process")
	}

	if err := c.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := c.Cmd.Wait(); err == nil {
		t.Fatal("child exited cleanly; want it killed")
	}
	l, err := p.LockBlob(&noWait{Context: t.Context()}, digestA)
	if err != nil {
		t.Fatalf("LockBlob after the holder was killed: %v; want the lock at once, without waiting", err)
	}
	l.Unlock()

	// Unheld now, the old lock file is litter.
	setAge(t, lockPath, 2*time.Hour)
	if n, err := p.Sweep(t.Context(), time.Now().Add(-time.Hour)); err != nil || n != 1 {
		t.Errorf("Sweep: got (%d, %v), want (1, nil)", n, err)
	}
	if testutil.Exists(t, lockPath) {
		t.Error("Sweep kept an old unheld lock file")
	}
}

// noWait is a context that ends the moment anyone waits on it: its Done
// channel is closed, and Err is context.Canceled once Done has been asked
// for. A lock taken with it is taken at once, on the first try: whoever
// waits for a held lock selects on Done, and gets Canceled. It says
// "at once" with no clock to misjudge a busy machine.
type noWait struct {
	context.Context
	waited atomic.Bool
}

var closedDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *noWait) Done() <-chan struct{} {
	c.waited.Store(true)
	return closedDone
}

func (c *noWait) Err() error {
	if c.waited.Load() {
		return context.Canceled
	}
	return nil
}

func TestNoWait(t *testing.T) {
	// What noWait says of a lock depends on this: a free lock is taken,
	// a held one is not waited for.
	p := newLayout(t)
	l, err := p.LockBlob(&noWait{Context: t.Context()}, digestA)
	if err != nil {
		t.Fatalf("LockBlob of a free lock with noWait: %v", err)
	}
	defer l.Unlock()
	if l2, err := p.LockBlob(&noWait{Context: t.Context()}, digestA); !errors.Is(err, context.Canceled) {
		l2.Unlock()
		t.Fatalf("LockBlob of a held lock with noWait: %v, want context.Canceled", err)
	}
}

func TestSweep(t *testing.T) {
	p := newLayout(t)
	ingest := func(name string) string { return p.Join(layoutfs.IngestDir, name) }

	// The index lock exists once index.json was updated.
	addRef(t, p, "a")
	held, err := p.LockBlob(t.Context(), digestA)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	unheld, err := p.LockBlob(t.Context(), digestB)
	if err != nil {
		t.Fatal(err)
	}
	unheld.Unlock()
	youngUnheld := digest.FromString("c")
	l, err := p.LockBlob(t.Context(), youngUnheld)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()

	files := []struct {
		name   string
		old    bool
		kept   bool
		reason string
	}{
		{"blob-1.tmp", true, false, "old temp file of a crashed writer"},
		{"blob-2.tmp", false, true, "young temp file of a live writer"},
		{"leftover", true, true, "old file of a name layercache never gives is not ours"},
		{"newcomer", false, true, "young file of unknown kind"},
		{"blob-dir.tmp", true, true, "old directory at a temp file's name: layercache makes no directory here"},
		{lockName(digestA), true, true, "old lock that is held"},
		{lockName(digestB), true, false, "old lock that nobody holds"},
		{lockName(youngUnheld), false, true, "young lock that nobody holds"},
		{"sha256-" + digestB.Encoded() + ".partial", true, false, "old partial download nobody resumed"},
		{"sha256-" + digestB.Encoded() + ".hashstate", true, false, "old hash state of a partial download, swept like it"},
		{"sha256-" + youngUnheld.Encoded() + ".hashstate", false, true, "young hash state: a download may resume from it"},
		{"hashstate-1.tmp", true, false, "old temp file of a hash state being written"},
		{"sha256-xyz.hashstate", true, true, "not a digest's name: not ours"},
		{layoutfs.IndexFile + ".lock", true, true, "the index lock, never removed"},
		{layoutfs.StatsFile + ".lock", true, true, "the stats lock, never removed"},
	}
	for _, f := range files {
		switch {
		case f.name == "blob-dir.tmp":
			testutil.WriteFile(t, filepath.Join(ingest(f.name), "inner"), "x")
		case !testutil.Exists(t, ingest(f.name)):
			testutil.WriteFile(t, ingest(f.name), "x")
		}
		if f.old {
			setAge(t, ingest(f.name), 2*time.Hour)
		}
	}
	n, err := p.Sweep(t.Context(), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	wantRemoved := 0
	for _, f := range files {
		if !f.kept {
			wantRemoved++
		}
		if got := testutil.Exists(t, ingest(f.name)); got != f.kept {
			t.Errorf("%s (%s): exists after Sweep = %v, want %v", f.name, f.reason, got, f.kept)
		}
	}
	if n != wantRemoved {
		t.Errorf("Sweep: got %d removed, want %d", n, wantRemoved)
	}

	// The held lock still excludes other holders after the sweep.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if l, err := p.LockBlob(ctx, digestA); err == nil {
		l.Unlock()
		t.Error("LockBlob succeeded on a lock that is held")
	}
}

func TestSweep_NoIngest(t *testing.T) {
	p := newLayout(t)
	if err := os.RemoveAll(p.Join(layoutfs.IngestDir)); err != nil {
		t.Fatal(err)
	}
	if n, err := p.Sweep(t.Context(), time.Now()); err != nil || n != 0 {
		t.Errorf("Sweep without ingest/: got (%d, %v), want (0, nil)", n, err)
	}
}

func TestSweep_CancelledContext(t *testing.T) {
	p := newLayout(t)
	testutil.WriteFile(t, p.Join(layoutfs.IngestDir, "blob-1.tmp"), "x")
	setAge(t, p.Join(layoutfs.IngestDir, "blob-1.tmp"), 2*time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.Sweep(ctx, time.Now()); !errors.Is(err, context.Canceled) {
		t.Errorf("Sweep: got %v, want context.Canceled", err)
	}
	if !testutil.Exists(t, p.Join(layoutfs.IngestDir, "blob-1.tmp")) {
		t.Error("a cancelled Sweep removed a file")
	}
}
