package main

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

// TestPruneConcurrentReaders checks prune's promise that "a blob being
// read stays readable to its reader": readers, one per layer, are part way
// through the verified stream of store.Open when `prune --max-size 1`
// evicts every blob, and still read each blob whole, with io.EOF (the
// reader's "size and digest matched") at the end.
func TestPruneConcurrentReaders(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "cache")
	mustRun(t, "--cache-dir", dir, "warm", f.single)
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}

	type result struct {
		n   int64
		got digest.Digest
		err error
	}
	layers := f.singleImg.layers
	results := make([]result, len(layers))
	var started, done sync.WaitGroup
	pruned := make(chan struct{})
	for i, l := range layers {
		rc, err := s.Open(t.Context(), digest.Digest(l))
		if err != nil {
			t.Fatal(err)
		}
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			defer rc.Close()
			h := digest.SHA256.Digester()
			buf := make([]byte, 512) // slowly: many small reads
			first := true
			for {
				n, err := rc.Read(buf)
				h.Hash().Write(buf[:n])
				results[i].n += int64(n)
				if first {
					first = false
					started.Done()
					<-pruned // the rest is read after prune removed the file
				}
				if err != nil {
					results[i].err = err
					break
				}
			}
			results[i].got = h.Digest()
		}()
	}
	started.Wait()

	code, stdout, stderr := runCLI(t, "", "--cache-dir", dir, "prune", "--max-size", "1", "--json")
	close(pruned)
	done.Wait()
	if code != exitOK {
		t.Fatalf("prune: exit %d, stderr: %s", code, stderr)
	}
	var rep pruneJSON
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.KeptBlobs != 0 || len(rep.Removed) != f.singleImg.blobs() {
		t.Errorf("prune removed %d blobs and kept %d, want all %d removed", len(rep.Removed), rep.KeptBlobs, f.singleImg.blobs())
	}
	for i, l := range layers {
		p := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(l, "sha256:"))
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("layer %s: still on disk after prune (%v)", l, err)
		}
		r := results[i]
		if r.err != io.EOF {
			t.Errorf("layer %s: final read error %v, want io.EOF", l, r.err)
		}
		if want := f.singleImg.sizes[l]; r.n != want {
			t.Errorf("layer %s: read %d bytes, want %d", l, r.n, want)
		}
		if r.got.String() != l {
			t.Errorf("layer %s: bytes read hash to %s", l, r.got)
		}
	}
}

// TestPruneWhileReading runs prune and readers at once, unsynchronised, as
// parallel CI jobs do: every reader either finds the blob gone before it
// opens it or reads it whole and verified.
func TestPruneWhileReading(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "cache")
	mustRun(t, "--cache-dir", dir, "warm", f.single)
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, l := range f.singleImg.layers {
		for range 4 {
			wg.Go(func() {
				rc, err := s.Open(t.Context(), digest.Digest(l))
				if errors.Is(err, store.ErrNotFound) {
					return // pruned first
				}
				if err != nil {
					t.Errorf("open %s: %v", l, err)
					return
				}
				defer rc.Close()
				n, err := io.Copy(io.Discard, io.LimitReader(rc, 1<<30))
				if err != nil || n != f.singleImg.sizes[l] {
					t.Errorf("read %s: %d bytes, %v; want %d bytes, no error", l, n, err, f.singleImg.sizes[l])
				}
			})
		}
	}
	code, _, stderr := runCLI(t, "", "--cache-dir", dir, "prune", "--max-size", "1")
	wg.Wait()
	if code != exitOK {
		t.Fatalf("prune: exit %d, stderr: %s", code, stderr)
	}
}
