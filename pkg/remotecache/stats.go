package remotecache

import (
	"context"
	"sync"

	"github.com/ocibuild/layercache/pkg/store"
)

// counters tallies where the blobs of one operation came from. When
// record is set, each event is also added to the store's persistent
// counters (store.AddStats) at once, for pulls that have no end to report
// at; Warm records its totals once instead.
type counters struct {
	mu        sync.Mutex
	hits      int
	hitBytes  int64
	misses    int
	missBytes int64

	record func(store.Stats)
}

func (c *counters) hit(n int64) {
	c.mu.Lock()
	c.hits++
	c.hitBytes += n
	c.mu.Unlock()
	if c.record != nil {
		c.record(store.Stats{Hits: 1, HitBytes: n})
	}
}

func (c *counters) miss(n int64) {
	c.mu.Lock()
	c.misses++
	c.missBytes += n
	c.mu.Unlock()
	if c.record != nil {
		c.record(store.Stats{Misses: 1, MissBytes: n})
	}
}

func (c *counters) snapshot() (hits int, hitBytes int64, misses int, missBytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.hitBytes, c.misses, c.missBytes
}

// recordTo returns a record func that adds to s's counters. Failures (a
// read-only cache) are ignored: counters are advice.
func recordTo(ctx context.Context, s *store.Store) func(store.Stats) {
	return func(delta store.Stats) {
		_ = s.AddStats(context.WithoutCancel(ctx), delta)
	}
}
