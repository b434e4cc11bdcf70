package remotecache

import (
	"maps"
	"sync"

	"github.com/ocibuild/layercache/pkg/store"
)

// counters tallies where the blobs of one operation came from. When
// record is set, each event is also handed to the store's persistent
// counters (store.Count, which writes them together within a second), for
// pulls that have no end to report at; Warm records its totals once
// instead. Hosts are recorded too when the pull has mirrors (byHost).
type counters struct {
	mu        sync.Mutex
	hits      int
	hitBytes  int64
	misses    int
	missBytes int64
	hosts     map[string]Tally // misses by host (missFrom)

	record func(store.Stats)
	user   *Counters // WithCounters
	byHost bool      // the pull has mirrors: record the misses by host
}

func (c *counters) hit(n int64) {
	c.mu.Lock()
	c.hits++
	c.hitBytes += n
	c.mu.Unlock()
	c.user.add(true, n)
	if c.record != nil {
		c.record(store.Stats{Hits: 1, HitBytes: n})
	}
}

func (c *counters) miss(n int64) {
	c.mu.Lock()
	c.misses++
	c.missBytes += n
	c.mu.Unlock()
	c.user.add(false, n)
	if c.record != nil {
		c.record(store.Stats{Misses: 1, MissBytes: n})
	}
}

// missFrom counts a miss of n bytes fetched from the named host (a
// mirror's URL, or the upstream's registry).
func (c *counters) missFrom(host string, n int64) {
	c.noteHost(host, n)
	c.miss(n)
}

// noteHost notes that a blob of n bytes came from the named host, for a
// miss counted apart.
func (c *counters) noteHost(host string, n int64) {
	c.mu.Lock()
	if c.hosts == nil {
		c.hosts = map[string]Tally{}
	}
	t := c.hosts[host]
	t.Blobs++
	t.Bytes += n
	c.hosts[host] = t
	c.mu.Unlock()
	if c.record != nil && c.byHost {
		c.record(store.Stats{Hosts: map[string]store.HostStats{host: {Blobs: 1, Bytes: n}}})
	}
}

// storeHosts converts tallies by host to the store's counters.
func storeHosts(hosts map[string]Tally) map[string]store.HostStats {
	if len(hosts) == 0 {
		return nil
	}
	m := make(map[string]store.HostStats, len(hosts))
	for h, t := range hosts {
		m[h] = store.HostStats{Blobs: int64(t.Blobs), Bytes: t.Bytes}
	}
	return m
}

// hostTallies returns the blobs fetched from each host.
func (c *counters) hostTallies() map[string]Tally {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.hosts)
}

func (c *counters) snapshot() (hits int, hitBytes int64, misses int, missBytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.hitBytes, c.misses, c.missBytes
}

// Counters tallies where the blobs of the pulls it is passed to (with
// WithCounters) came from: the cache or the registry. Unlike the store's
// persistent counters (store.Stats), which every process using the cache
// adds to, it counts only this caller's pulls. It is safe for concurrent
// use; the zero value is ready.
type Counters struct {
	mu      sync.Mutex
	cached  Tally
	fetched Tally
}

// Cached returns the blobs and bytes served from the cache so far.
func (c *Counters) Cached() Tally {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cached
}

// Fetched returns the blobs and bytes fetched from the registry so far.
func (c *Counters) Fetched() Tally {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fetched
}

func (c *Counters) add(cached bool, n int64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	t := &c.fetched
	if cached {
		t = &c.cached
	}
	t.Blobs++
	t.Bytes += n
	c.mu.Unlock()
}
