package store_test

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

func TestStats(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	ctx := context.Background()
	if st, err := s.Stats(ctx); err != nil || !reflect.DeepEqual(st, store.Stats{}) {
		t.Errorf("Stats of a new store: got (%+v, %v), want zero", st, err)
	}
	start := time.Now().Add(-time.Second)
	if err := s.AddStats(ctx, store.Stats{Hits: 1, HitBytes: 100}); err != nil {
		t.Fatal(err)
	}
	first, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first.Since.Before(start) || first.Since.After(time.Now().Add(time.Second)) {
		t.Errorf("Since: got %v, want about now", first.Since)
	}
	if err := s.AddStats(ctx, store.Stats{Hits: 2, HitBytes: 20, Misses: 1, MissBytes: 5}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := store.Stats{Hits: 3, HitBytes: 120, Misses: 1, MissBytes: 5, Since: first.Since}
	if !got.Since.Equal(want.Since) {
		t.Errorf("Since moved: got %v, want %v", got.Since, want.Since)
	}
	got.Since, want.Since = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Stats: got %+v, want %+v", got, want)
	}

	if err := s.ResetStats(ctx); err != nil {
		t.Fatal(err)
	}
	got, err = s.Stats(ctx)
	if err != nil || got.Hits != 0 || got.HitBytes != 0 || got.Misses != 0 || got.MissBytes != 0 || got.Since.IsZero() {
		t.Errorf("Stats after Reset: got (%+v, %v), want zero counters since now", got, err)
	}
}

func TestStats_Garbage(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	ctx := context.Background()
	writeFile(t, s.Layout().Join(layout.StatsFile), "{not json")
	if st, err := s.Stats(ctx); err != nil || !reflect.DeepEqual(st, store.Stats{}) {
		t.Errorf("Stats of a garbage file: got (%+v, %v), want zero counters, no error (they are advice)", st, err)
	}
	if err := s.AddStats(ctx, store.Stats{Misses: 1}); err != nil {
		t.Fatalf("AddStats over garbage: %v", err)
	}
	if st, err := s.Stats(ctx); err != nil || st.Misses != 1 {
		t.Errorf("Stats: got (%+v, %v), want counting started again", st, err)
	}
}

func TestStats_Concurrent(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	// A second Store on the same directory stands for another process.
	s2 := mustOpen(t, s.Dir())
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			st := s
			if i%2 == 1 {
				st = s2
			}
			if err := st.AddStats(context.Background(), store.Stats{Hits: 1, HitBytes: 10}); err != nil {
				t.Errorf("AddStats: %v", err)
			}
		})
	}
	wg.Wait()
	got, err := s.Stats(context.Background())
	if err != nil || got.Hits != n || got.HitBytes != 10*n {
		t.Errorf("Stats: got (%+v, %v), want %d hits of %d bytes (none lost)", got, err, n, 10*n)
	}
}

func TestStats_CancelledContext(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Stats(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Stats: got %v, want context.Canceled", err)
	}
	if err := s.AddStats(ctx, store.Stats{Hits: 1}); !errors.Is(err, context.Canceled) {
		t.Errorf("AddStats: got %v, want context.Canceled", err)
	}
	if err := s.ResetStats(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ResetStats: got %v, want context.Canceled", err)
	}
}

// Count holds counters in memory: Stats in the same process sees them at
// once, another Store on the directory (another process) once Close has
// written them, and by host.
func TestStats_Count(t *testing.T) {
	ctx := context.Background()
	s := mustOpen(t, t.TempDir())
	other := mustOpen(t, s.Dir())
	for range 3 {
		s.Count(store.Stats{Misses: 1, MissBytes: 10, Hosts: map[string]store.HostStats{"mirror.example": {Blobs: 1, Bytes: 10}}})
	}
	s.Count(store.Stats{Hits: 1, HitBytes: 5})
	want := store.Stats{Hits: 1, HitBytes: 5, Misses: 3, MissBytes: 30, Hosts: map[string]store.HostStats{"mirror.example": {Blobs: 3, Bytes: 30}}}
	got, err := s.Stats(ctx)
	got.Since = time.Time{}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Stats in the counting process: got (%+v, %v), want %+v", got, err, want)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, st := range []*store.Store{s, other} {
		got, err := st.Stats(ctx)
		if got.Since.IsZero() {
			t.Errorf("Since not set after Close")
		}
		got.Since = time.Time{}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Stats after Close: got (%+v, %v), want %+v (written once, not twice)", got, err, want)
		}
	}
	// ResetStats drops what is counted and not written yet.
	s.Count(store.Stats{Hits: 7})
	if err := s.ResetStats(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := other.Stats(ctx); err != nil || got.Hits != 0 || got.Misses != 0 || got.Hosts != nil {
		t.Errorf("Stats after ResetStats: got (%+v, %v), want zero", got, err)
	}
}
