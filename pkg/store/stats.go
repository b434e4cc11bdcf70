package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/ocibuild/layercache/internal/diskerr"
)

// Stats are the counters that pulls add to, kept beside the blobs so that
// many processes and many CI runs add up. Its JSON field names are stable.
type Stats struct {
	Hits      int64     `json:"hits"`      // blobs served from the cache
	HitBytes  int64     `json:"hitBytes"`  // their bytes: what the cache saved
	Misses    int64     `json:"misses"`    // blobs fetched from a registry
	MissBytes int64     `json:"missBytes"` // their bytes
	Since     time.Time `json:"since"`     // when counting started
}

// Stats returns the counters recorded so far. A cache with none gives
// zero counters. An unreadable stats file gives zero counters too: they
// are advice, not data.
func (s *Store) Stats(ctx context.Context) (st Stats, err error) {
	defer diskerr.MarkAt(&err)
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	b, err := s.path.ReadStats()
	if err != nil {
		return Stats{}, err
	}
	if len(b) > 0 && json.Unmarshal(b, &st) != nil {
		st = Stats{}
	}
	return st, nil
}

// AddStats adds delta's counters to the recorded ones, atomically across
// processes. A read-only cache gives an error the caller may ignore.
func (s *Store) AddStats(ctx context.Context, delta Stats) (err error) {
	defer diskerr.MarkAt(&err)
	return s.path.UpdateStats(ctx, func(old []byte) ([]byte, error) {
		var st Stats
		if len(old) > 0 && json.Unmarshal(old, &st) != nil {
			st = Stats{} // garbage: start counting again
		}
		if st.Since.IsZero() {
			st.Since = s.now().UTC()
		}
		st.Hits += delta.Hits
		st.HitBytes += delta.HitBytes
		st.Misses += delta.Misses
		st.MissBytes += delta.MissBytes
		return json.MarshalIndent(st, "", "  ")
	})
}

// ResetStats clears the counters.
func (s *Store) ResetStats(ctx context.Context) (err error) {
	defer diskerr.MarkAt(&err)
	return s.path.UpdateStats(ctx, func([]byte) ([]byte, error) {
		return json.MarshalIndent(Stats{Since: s.now().UTC()}, "", "  ")
	})
}
