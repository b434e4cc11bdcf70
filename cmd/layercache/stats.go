package main

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/store"
)

// statsJSON is the stable schema of `layercache stats --json`.
type statsJSON struct {
	Dir       string      `json:"dir"`
	Blobs     int         `json:"blobs"`
	Bytes     int64       `json:"bytes"`
	Refs      int         `json:"refs"`
	OldestUse string      `json:"oldestUse,omitempty"` // RFC 3339
	NewestUse string      `json:"newestUse,omitempty"`
	Counters  store.Stats `json:"counters"`
}

func newStatsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Summarise the cache: blobs, bytes, refs, hits and misses",
		Long: `Print how many blobs and bytes the cache holds, how many refs, the oldest and
newest last use, and the counters that pulls through the cache add to: blobs
and bytes served from the cache (bytes saved) and fetched from registries,
split by host when pulls went through mirrors.`,
		Example: `  # At the end of a CI job: what did the cache save?
  layercache stats

  # The hit rate, for a dashboard
  layercache stats --json | jq '.counters.hits / (.counters.hits + .counters.misses)'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			s, err := g.openStore()
			if err != nil {
				return err
			}
			out := statsJSON{Dir: s.Dir()}
			var oldest, newest time.Time
			if err := s.Walk(ctx, func(i store.Info) error {
				out.Blobs++
				out.Bytes += i.Size
				if oldest.IsZero() || i.LastUsed.Before(oldest) {
					oldest = i.LastUsed
				}
				if i.LastUsed.After(newest) {
					newest = i.LastUsed
				}
				return nil
			}); err != nil {
				return err
			}
			refs, err := s.Refs(ctx)
			if err != nil {
				return err
			}
			out.Refs = len(refs)
			if !oldest.IsZero() {
				out.OldestUse = oldest.UTC().Format(time.RFC3339)
				out.NewestUse = newest.UTC().Format(time.RFC3339)
			}
			if out.Counters, err = s.Stats(ctx); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(out)
			}
			now := time.Now()
			c := out.Counters
			fmt.Fprintf(g.stdout, "dir:       %s\n", out.Dir)
			fmt.Fprintf(g.stdout, "blobs:     %d (%s)\n", out.Blobs, humanBytes(out.Bytes))
			fmt.Fprintf(g.stdout, "refs:      %d\n", out.Refs)
			fmt.Fprintf(g.stdout, "last use:  oldest %s, newest %s\n", ago(now, oldest), ago(now, newest))
			fmt.Fprintf(g.stdout, "hits:      %d blobs, %s saved\n", c.Hits, humanBytes(c.HitBytes))
			fmt.Fprintf(g.stdout, "misses:    %d blobs, %s fetched\n", c.Misses, humanBytes(c.MissBytes))
			for _, h := range slices.Sorted(maps.Keys(c.Hosts)) {
				fmt.Fprintf(g.stdout, "  from %s: %d blobs, %s\n", h, c.Hosts[h].Blobs, humanBytes(c.Hosts[h].Bytes))
			}
			if total := c.Hits + c.Misses; total > 0 {
				fmt.Fprintf(g.stdout, "hit rate:  %.0f%% of blobs since %s\n", 100*float64(c.Hits)/float64(total), c.Since.Local().Format("2006-01-02"))
			}
			return nil
		},
	}
}
