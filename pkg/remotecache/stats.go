package remotecache

import "sync"

// counters tallies where the blobs of one operation came from.
type counters struct {
	mu        sync.Mutex
	hits      int
	hitBytes  int64
	misses    int
	missBytes int64
}

func (c *counters) hit(n int64) {
	c.mu.Lock()
	c.hits++
	c.hitBytes += n
	c.mu.Unlock()
}

func (c *counters) miss(n int64) {
	c.mu.Lock()
	c.misses++
	c.missBytes += n
	c.mu.Unlock()
}

func (c *counters) snapshot() (hits int, hitBytes int64, misses int, missBytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.hitBytes, c.misses, c.missBytes
}
