package store_test

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestPut_ConstantMemory puts a 1 GiB stream (256 MiB under the race
// detector) and checks that the heap does not grow with it: Put streams
// through a fixed buffer, unlike the cache it replaces, which held whole
// layers in memory.
func TestPut_ConstantMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1 GiB; skipped with -short")
	}
	size := int64(1 << 30)
	if raceEnabled {
		size = 256 << 20
	}
	const limit = 32 << 20
	s := mustOpen(t, t.TempDir())
	want := genDigest(t, size)

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var (
		peak uint64
		stop = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		var m runtime.MemStats
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	d, err := s.Put(context.Background(), newGenReader(size))
	close(stop)
	wg.Wait()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if d != want {
		t.Errorf("Put: got %s, want %s", d, want)
	}
	grown := int64(peak) - int64(before.HeapInuse)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("Put of %d MiB: heap in use grew by at most %d KiB, %d KiB allocated", size>>20, grown>>10, allocated>>10)
	if grown > limit {
		t.Errorf("heap in use grew by %d MiB during Put, want < %d MiB", grown>>20, limit>>20)
	}
	if allocated > limit {
		t.Errorf("Put allocated %d MiB in total, want < %d MiB", allocated>>20, limit>>20)
	}
	info, err := s.Stat(context.Background(), d)
	if err != nil || info.Size != size {
		t.Errorf("Stat: got (%+v, %v), want size %d", info, err, size)
	}
}
