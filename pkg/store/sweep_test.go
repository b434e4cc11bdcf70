package store

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"testing"
	"time"

	"github.com/ocibuild/layercache/internal/layoutfs"
)

// TestClear_SweepsByClock checks Clear's sweep against the store's clock:
// litter just over an hour old goes, litter just under stays.
func TestClear_SweepsByClock(t *testing.T) {
	s, _ := newTestStore(t)
	files := []struct {
		name   string
		age    time.Duration
		kept   bool
		reason string
	}{
		{"blob-a.tmp", 61 * time.Minute, false, "just over an hour: a crashed writer's"},
		{"blob-b.tmp", 59 * time.Minute, true, "just under an hour: may be a live writer's"},
		{"blob-c.tmp", 0, true, "brand new"},
	}
	for _, f := range files {
		path := s.path.Join(layoutfs.IngestDir, f.name)
		if err := os.WriteFile(path, []byte("litter"), 0o600); err != nil {
			t.Fatal(err)
		}
		when := t0.Add(-f.age)
		if err := os.Chtimes(path, when, when); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Clear(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		_, err := os.Stat(s.path.Join(layoutfs.IngestDir, f.name))
		if got := err == nil; got != f.kept || err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s (%s): exists after Clear = %v (%v), want %v", f.name, f.reason, got, err, f.kept)
		}
	}
}

// TestRemoveCorrupted_KeepsReplacement checks the guard of removeCorrupted:
// if a good blob was renamed in (by another process) after the bad one was
// opened, the good one stays.
func TestRemoveCorrupted_KeepsReplacement(t *testing.T) {
	s, _ := newTestStore(t)
	d := put(t, s, []byte("good"))
	path, _ := s.path.BlobPath(d)
	bad, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Another writer publishes the same blob: a new file at the name.
	put(t, s, []byte("good"))
	if cur, _ := os.Lstat(path); os.SameFile(cur, bad) {
		t.Fatal("Put did not replace the file; the test needs a new inode")
	}
	s.removeCorrupted(d, path, bad, errors.New("test"))
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("removeCorrupted removed a file other than the one that failed: %v", err)
	}
	// The file that failed, still at its name, is removed.
	cur, _ := os.Lstat(path)
	s.removeCorrupted(d, path, cur, errors.New("test"))
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("removeCorrupted kept the file that failed: %v", err)
	}
}
