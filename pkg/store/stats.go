package store

import (
	"context"
	"encoding/json"
	"maps"
	"sync"
	"time"
)

// Stats are the counters that pulls add to, kept beside the blobs so that
// many processes and many CI runs add up. Its JSON field names are stable.
type Stats struct {
	Hits      int64     `json:"hits"`      // blobs served from the cache
	HitBytes  int64     `json:"hitBytes"`  // their bytes: what the cache saved
	Misses    int64     `json:"misses"`    // blobs fetched from a registry
	MissBytes int64     `json:"missBytes"` // their bytes
	Since     time.Time `json:"since"`     // when counting started
	// Hosts splits the misses by the host that served them (a mirror's
	// URL, or a registry's name), for pulls through mirrors. Pulls with
	// no mirror leave it out.
	Hosts map[string]HostStats `json:"hosts,omitempty"`
}

// HostStats counts the blobs, and their bytes, fetched from one host.
type HostStats struct {
	Blobs int64 `json:"blobs"`
	Bytes int64 `json:"bytes"`
}

func (st *Stats) add(d Stats) {
	st.Hits += d.Hits
	st.HitBytes += d.HitBytes
	st.Misses += d.Misses
	st.MissBytes += d.MissBytes
	for h, n := range d.Hosts {
		if st.Hosts == nil {
			st.Hosts = map[string]HostStats{}
		}
		t := st.Hosts[h]
		t.Blobs += n.Blobs
		t.Bytes += n.Bytes
		st.Hosts[h] = t
	}
}

func (st Stats) zero() bool {
	return st.Hits == 0 && st.HitBytes == 0 && st.Misses == 0 && st.MissBytes == 0 && len(st.Hosts) == 0
}

// countDelay bounds how long counters given to Count wait in memory
// before they are written: a pull serving many blobs rewrites the stats
// file once per countDelay at most, not once per blob.
const countDelay = time.Second

// counting holds the counters given to Count and not written yet.
type counting struct {
	mu      sync.Mutex
	pending Stats
	timer   *time.Timer // set while a write is due

	// write serialises writes of the pending counters with Stats and
	// ResetStats, so that a reader in this process never counts a delta
	// twice or misses one on its way to the file.
	write sync.Mutex
}

// Stats returns the counters recorded so far, with those this process
// counted (Count) and has not written yet. A cache with none gives zero
// counters. An unreadable stats file gives zero counters too: they are
// advice, not data.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	s.counts.write.Lock()
	defer s.counts.write.Unlock()
	b, err := s.path.ReadStats()
	if err != nil {
		return Stats{}, err
	}
	var st Stats
	if len(b) > 0 && json.Unmarshal(b, &st) != nil {
		st = Stats{}
	}
	s.counts.mu.Lock()
	st.add(s.counts.pending)
	s.counts.mu.Unlock()
	return st, nil
}

// AddStats adds delta's counters to the recorded ones at once, atomically
// across processes. A read-only cache gives an error the caller may
// ignore.
func (s *Store) AddStats(ctx context.Context, delta Stats) error {
	return s.path.UpdateStats(ctx, func(old []byte) ([]byte, error) {
		var st Stats
		if len(old) > 0 && json.Unmarshal(old, &st) != nil {
			st = Stats{} // garbage: start counting again
		}
		if st.Since.IsZero() {
			st.Since = s.now().UTC()
		}
		st.add(delta)
		return json.MarshalIndent(st, "", "  ")
	})
}

// Count adds delta to the counters without waiting for the file: deltas
// are summed in memory and written together within a second (countDelay),
// or by Close. Stats in this process includes them at once; other
// processes see them once written. Errors writing them (a read-only
// cache) are dropped: counters are advice.
func (s *Store) Count(delta Stats) {
	if delta.zero() {
		return
	}
	c := &s.counts
	c.mu.Lock()
	defer c.mu.Unlock()
	delta.Hosts = maps.Clone(delta.Hosts)
	c.pending.add(delta)
	if c.timer == nil {
		c.timer = time.AfterFunc(countDelay, func() { _ = s.flushCounts() })
	}
}

// flushCounts writes the counters given to Count since the last write.
func (s *Store) flushCounts() error {
	c := &s.counts
	c.write.Lock()
	defer c.write.Unlock()
	c.mu.Lock()
	delta := c.pending
	c.pending = Stats{}
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	c.mu.Unlock()
	if delta.zero() {
		return nil
	}
	return s.AddStats(context.Background(), delta)
}

// Close writes the counters that Count holds in memory, and returns the
// error of that write. The store stays usable; a program that counts
// through remotecache calls Close before it exits, so that the last
// second's counters are not lost.
func (s *Store) Close() error {
	return s.flushCounts()
}

// ResetStats clears the counters, with those counted in this process and
// not written yet.
func (s *Store) ResetStats(ctx context.Context) error {
	c := &s.counts
	c.write.Lock()
	defer c.write.Unlock()
	c.mu.Lock()
	c.pending = Stats{}
	c.mu.Unlock()
	return s.path.UpdateStats(ctx, func([]byte) ([]byte, error) {
		return json.MarshalIndent(Stats{Since: s.now().UTC()}, "", "  ")
	})
}
