package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/pkg/store"
	"github.com/ocibuild/layercache/pkg/store/storetest"
)

// Environment variables that switch a re-executed test binary into a child
// role (testutil.StartChild). childDirEnv names the store the child
// works on; its presence is what makes a test act as the child.
const (
	childDirEnv  = "LAYERCACHE_STORE_CHILD_DIR"
	childIDEnv   = "LAYERCACHE_STORE_CHILD_ID"
	childSyncEnv = "LAYERCACHE_STORE_CHILD_SYNC"
)

// fileExists reports whether path exists; it never fails the test, so
// children and pollers may call it.
func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// crossProcessBlobs are the blobs the children of TestCrossProcess share:
// overlapping digests of sizes from empty to a few buffers.
func crossProcessBlobs() [][]byte {
	sizes := []int{0, 1, 100, 64 << 10, 1<<20 - 1, 1 << 20, 1<<20 + 1, 3<<20 + 17}
	var blobs [][]byte
	for i, n := range sizes {
		blobs = append(blobs, storetest.Blob(uint64(1000+i), n))
	}
	return blobs
}

// TestCrossProcess has N processes (this test binary, re-executed) put,
// read, delete and clear the same blobs at once for about two seconds.
// Every read gives the right bytes or ErrNotFound, never ErrCorrupted; and
// the parent, polling blobs/sha256 all along, never sees a file at a final
// name that does not hash to its name. The children go on past the two
// seconds until the parent has seen a blob, so that a parent starved of
// CPU still checks some.
func TestCrossProcess(t *testing.T) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		crossProcessChild(t, dir)
		return
	}
	if testing.Short() {
		t.Skip("runs for two seconds; skipped with -short")
	}
	const children = 4
	dir := t.TempDir()
	mustOpen(t, dir)
	syncDir := t.TempDir()
	var cs []*testutil.Child
	for i := range children {
		cs = append(cs, testutil.StartChild(t, t.Name(),
			childDirEnv+"="+dir, childIDEnv+"="+strconv.Itoa(i), childSyncEnv+"="+syncDir))
	}
	for i := range children {
		testutil.WaitFor(t, time.Minute, "child "+strconv.Itoa(i)+" ready", func() bool {
			return fileExists(filepath.Join(syncDir, "ready-"+strconv.Itoa(i)))
		})
	}
	testutil.WriteFile(t, filepath.Join(syncDir, "go"), "")

	// Poll until every child has exited.
	var exited atomic.Int32
	for _, c := range cs {
		go func() {
			c.Cmd.Wait()
			exited.Add(1)
		}()
	}
	sha256Dir := filepath.Join(dir, layoutfs.BlobsDir, "sha256")
	checked, rounds := 0, 0
	seen := false
	for exited.Load() < children {
		checked += checkFinalNames(t, sha256Dir)
		rounds++
		if checked > 0 && !seen {
			testutil.WriteFile(t, filepath.Join(syncDir, "seen"), "")
			seen = true
		}
		// Leave the children CPU: with two cores, a busy parent
		// would starve them of the races this test is for.
		time.Sleep(2 * time.Millisecond)
	}
	for _, c := range cs {
		if !c.Cmd.ProcessState.Success() {
			t.Errorf("child %v: %v\n%s", c.Cmd.Args, c.Cmd.ProcessState, c.Out)
		} else if testing.Verbose() {
			t.Logf("child: %s", strings.TrimSpace(c.Out.String()))
		}
	}
	t.Logf("parent checked %d files at their final names in %d rounds", checked, rounds)
	if checked == 0 {
		t.Errorf("the parent never saw a blob in %v: the children did not run", crossProcessMaxRun)
	}
}

// checkFinalNames hashes every file in dir and fails the test if one does
// not hash to its name. Files removed while being listed are skipped; a
// file removed while being read is still read whole (it is immutable).
func checkFinalNames(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		f, err := os.OpenFile(filepath.Join(dir, e.Name()), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Errorf("opening %s: %v", e.Name(), err)
			continue
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Errorf("reading %s: %v", e.Name(), err)
			continue
		}
		if got := digest.NewDigest(digest.SHA256, h).Encoded(); got != e.Name() {
			t.Errorf("file %s at a final name hashes to %s: a partial or wrong blob was visible", e.Name(), got)
		}
		n++
	}
	return n
}

// crossProcessMaxRun bounds a child's run when the parent never says it
// has seen a blob: only children that put nothing take that long.
const crossProcessMaxRun = time.Minute

func crossProcessChild(t *testing.T, dir string) {
	id, _ := strconv.Atoi(os.Getenv(childIDEnv))
	syncDir := os.Getenv(childSyncEnv)
	s := mustOpen(t, dir)
	blobs := crossProcessBlobs()
	testutil.WriteFile(t, filepath.Join(syncDir, "ready-"+strconv.Itoa(id)), "")
	testutil.WaitFor(t, time.Minute, "go", func() bool { return fileExists(filepath.Join(syncDir, "go")) })

	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(id), 42))
	counts := map[string]int{}
	check := func(op string, got []byte, err error, want []byte) {
		t.Helper()
		switch {
		case err == nil && !bytes.Equal(got, want):
			t.Errorf("%s: got %d bytes, want %d (content differs)", op, len(got), len(want))
		case err != nil && !errors.Is(err, store.ErrNotFound):
			t.Errorf("%s: got %v, want the blob or ErrNotFound", op, err)
		}
	}
	start := time.Now()
	seen := filepath.Join(syncDir, "seen")
	running := func() bool {
		switch d := time.Since(start); {
		case d < 2*time.Second:
			return true
		case d > crossProcessMaxRun:
			return false
		default:
			return !fileExists(seen)
		}
	}
	for running() {
		data := blobs[rng.IntN(len(blobs))]
		d := digest.FromBytes(data)
		var op string
		switch r := rng.IntN(100); {
		case r < 25:
			op = "Put"
			if got, err := s.Put(ctx, bytes.NewReader(data)); err != nil || got != d {
				t.Errorf("Put: got (%s, %v), want %s", got, err, d)
			}
		case r < 35:
			op = "PutVerified"
			if err := s.PutVerified(ctx, d, int64(len(data)), bytes.NewReader(data)); err != nil {
				t.Errorf("PutVerified: %v", err)
			}
		case r < 55:
			op = "Open"
			rc, err := s.Open(ctx, d)
			var got []byte
			if err == nil {
				got, err = io.ReadAll(rc)
				rc.Close()
			}
			check(op, got, err, data)
		case r < 70:
			op = "Get"
			got, err := s.Get(ctx, d)
			check(op, got, err, data)
		case r < 80:
			op = "OpenVerified"
			rc, _, err := s.OpenVerified(ctx, d)
			var got []byte
			if err == nil {
				got, err = io.ReadAll(rc)
				rc.Close()
			}
			check(op, got, err, data)
		case r < 97:
			op = "Delete"
			if err := s.Delete(ctx, d); err != nil && !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Delete: %v", err)
			}
		default:
			op = "Clear"
			if err := s.Clear(ctx); err != nil {
				t.Errorf("Clear: %v", err)
			}
		}
		counts[op]++
	}
	fmt.Printf("child %d ops: %v\n", id, counts)
}

// TestPut_Killed kills a child process with SIGKILL while it is in the
// middle of a Put: no blob appears at the final name, the store opens and
// takes the same Put, and the temp file left in ingest/ is swept once it is
// an hour old.
func TestPut_Killed(t *testing.T) {
	const size = 2 << 20
	data := storetest.Blob(7, size)
	if dir := os.Getenv(childDirEnv); dir != "" {
		s := mustOpen(t, dir)
		// Half the data, then a stall that only SIGKILL ends.
		r := io.MultiReader(bytes.NewReader(data[:size/2]), stallReader{})
		s.Put(context.Background(), r)
		t.Error("Put returned from a stalled reader")
		return
	}
	dir := t.TempDir()
	s := mustOpen(t, dir)
	d := digest.FromBytes(data)
	c := testutil.StartChild(t, t.Name(), childDirEnv+"="+dir)

	ingest := layoutfs.Path(s.Dir()).Join(layoutfs.IngestDir)
	var temp string
	testutil.WaitFor(t, time.Minute, "half-written temp file in ingest/", func() bool {
		entries, _ := os.ReadDir(ingest)
		for _, e := range entries {
			if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".tmp") && fi.Size() >= size/2 {
				temp = filepath.Join(ingest, e.Name())
				return true
			}
		}
		return false
	})
	if err := c.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := c.Cmd.Wait(); err == nil {
		t.Fatalf("child exited cleanly; want it killed\n%s", c.Out)
	}

	path, _ := layoutfs.Path(s.Dir()).BlobPath(d)
	if testutil.Exists(t, path) {
		t.Error("a blob is at its final name after its writer was killed mid-Put")
	}
	if entries, _ := os.ReadDir(layoutfs.Path(s.Dir()).AlgorithmDir(digest.SHA256)); len(entries) != 0 {
		t.Errorf("blobs/sha256 holds %d entries after a killed Put, want none", len(entries))
	}

	// A fresh Open works and keeps the temp file, which is young.
	s2 := mustOpen(t, dir)
	if !testutil.Exists(t, temp) {
		t.Error("Open swept a young temp file")
	}
	if got := mustPut(t, s2, data); got != d {
		t.Errorf("Put after the kill: got %s, want %s", got, d)
	}
	if got, err := s2.Get(context.Background(), d); err != nil || !bytes.Equal(got, data) {
		t.Errorf("Get after the kill: got %d bytes, %v", len(got), err)
	}

	// An hour later, the litter goes.
	setAge(t, temp, 2*time.Hour)
	mustOpen(t, dir)
	if testutil.Exists(t, temp) {
		t.Error("Open kept a temp file two hours old")
	}
}

// stallReader blocks for longer than any test runs.
type stallReader struct{}

func (stallReader) Read([]byte) (int, error) {
	time.Sleep(time.Hour)
	return 0, io.EOF
}
