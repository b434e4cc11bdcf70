package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/pkg/store"
)

// VerifyAll reports every blob once, names the corrupted one with
// ErrCorrupted, and leaves it in place for the caller to remove.
func TestVerifyAll(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	var want []string
	for _, b := range []string{"one", "two", "three", "four"} {
		want = append(want, mustPut(t, s, []byte(b)).String())
	}
	bad := digest.FromString("two")
	path := filepath.Join(dir, "blobs", bad.Algorithm().String(), bad.Encoded())
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.WriteFile(t, path, "tw0")

	var got []string
	var corrupted []digest.Digest
	if err := s.VerifyAll(ctx, 2, func(i store.Info, err error) {
		got = append(got, i.Digest.String())
		if err != nil {
			if !errors.Is(err, store.ErrCorrupted) {
				t.Errorf("result of %s: got %v, want nil or ErrCorrupted", i.Digest, err)
			}
			corrupted = append(corrupted, i.Digest)
		}
	}); err != nil {
		t.Fatalf("VerifyAll: %v", err)
	}
	sort.Strings(got)
	sort.Strings(want)
	if len(got) != len(want) {
		t.Fatalf("VerifyAll reported %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("VerifyAll reported %v, want %v", got, want)
		}
	}
	if len(corrupted) != 1 || corrupted[0] != bad {
		t.Errorf("corrupted: got %v, want [%s]", corrupted, bad)
	}
	if !testutil.Exists(t, path) {
		t.Errorf("VerifyAll removed the corrupted blob; it must leave it for the caller")
	}
}

func TestVerifyAll_Jobs(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	if err := s.VerifyAll(context.Background(), 0, func(store.Info, error) {}); err == nil {
		t.Errorf("VerifyAll with 0 jobs: got nil, want an error")
	}
}
