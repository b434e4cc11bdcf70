package layoutfs_test

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"
	"testing"

	"github.com/ocibuild/layercache/internal/layoutfs"
)

func TestReadStats_Missing(t *testing.T) {
	p := newLayout(t)
	b, err := p.ReadStats()
	if err != nil || b != nil {
		t.Errorf("ReadStats without a stats file: got (%q, %v), want (nil, nil)", b, err)
	}
}

func TestUpdateStats(t *testing.T) {
	p := newLayout(t)
	var seen [][]byte
	for _, content := range []string{"first", "second"} {
		err := p.UpdateStats(t.Context(), func(old []byte) ([]byte, error) {
			seen = append(seen, old)
			return []byte(content), nil
		})
		if err != nil {
			t.Fatalf("UpdateStats: %v", err)
		}
	}
	if seen[0] != nil || string(seen[1]) != "first" {
		t.Errorf("fn saw %q, want [nil \"first\"]", seen)
	}
	if b, err := p.ReadStats(); err != nil || string(b) != "second" {
		t.Errorf("ReadStats: got (%q, %v), want %q", b, err, "second")
	}
	if fi, err := os.Stat(p.Join(layoutfs.StatsFile)); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("stats file: got %v, %v; want mode 0644", fi.Mode(), err)
	}

	errStop := errors.New("stop")
	err := p.UpdateStats(t.Context(), func([]byte) ([]byte, error) { return []byte("lost"), errStop })
	if !errors.Is(err, errStop) {
		t.Errorf("UpdateStats: got %v, want %v", err, errStop)
	}
	if b, _ := p.ReadStats(); string(b) != "second" {
		t.Errorf("stats file after a failed fn: got %q, want %q", b, "second")
	}
	entries, err := os.ReadDir(p.Join(layoutfs.IngestDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != layoutfs.StatsFile+".lock" {
			t.Errorf("ingest/ holds %s after UpdateStats, want only the stats lock", e.Name())
		}
	}
}

func TestUpdateStats_Goroutines(t *testing.T) {
	p := newLayout(t)
	const n = 40
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			err := p.UpdateStats(t.Context(), func(old []byte) ([]byte, error) {
				c, _ := strconv.Atoi(string(old))
				return []byte(strconv.Itoa(c + 1)), nil
			})
			if err != nil {
				t.Errorf("UpdateStats: %v", err)
			}
		})
	}
	wg.Wait()
	if b, _ := p.ReadStats(); !bytes.Equal(b, []byte(strconv.Itoa(n))) {
		t.Errorf("counter: got %q, want %d (an update was lost)", b, n)
	}
}
