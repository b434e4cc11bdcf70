package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/store"
)

// pruneJSON is the stable schema of `layercache prune --json`.
type pruneJSON struct {
	DryRun      bool     `json:"dryRun"`
	Removed     []string `json:"removed"` // digests, least recently used first
	FreedBytes  int64    `json:"freedBytes"`
	KeptBlobs   int      `json:"keptBlobs"`
	KeptBytes   int64    `json:"keptBytes"`
	DroppedRefs []string `json:"droppedRefs"`
	SweptIngest int      `json:"sweptIngest"`
}

func newPruneCmd(g *globals) *cobra.Command {
	var (
		maxSize string
		maxAge  string
		dryRun  bool
	)
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Evict least-recently-used blobs to bound the cache",
		Long: `Evict every blob not used for longer than --max-age, then the least recently
used blobs until the rest fit in --max-size. Refs whose manifest was evicted
are dropped from index.json, and temp files left by crashed writers are swept.

Prune is safe while other processes use the cache: a blob being read stays
readable to its reader, and a blob used again since prune listed it is kept.
Last use is refreshed at most hourly, which is as precise as eviction gets.`,
		Example: `  # Keep a CI cache under 2 GiB before saving it
  layercache prune --max-size 2GiB

  # Drop what no build used for a month, and see first
  layercache prune --max-age 30d --dry-run`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var p store.Policy
			if maxSize != "" {
				n, err := parseSize(maxSize)
				if err != nil {
					return usagef("--max-size: %w", err)
				}
				p.MaxSize = n
				if n == 0 {
					return usagef("--max-size 0 would evict everything; use `layercache clear`")
				}
			}
			if maxAge != "" {
				d, err := parseAge(maxAge)
				if err != nil {
					return usagef("--max-age: %w", err)
				}
				if d == 0 {
					return usagef("--max-age 0 would evict everything; use `layercache clear`")
				}
				p.MaxAge = d
			}
			p.DryRun = dryRun
			s, err := g.openStore()
			if err != nil {
				return err
			}
			rep, err := s.Prune(cmd.Context(), p)
			if err != nil {
				return err
			}
			out := pruneJSON{DryRun: dryRun, Removed: []string{}, FreedBytes: rep.FreedBytes, KeptBlobs: rep.Kept,
				KeptBytes: rep.KeptBytes, DroppedRefs: append([]string{}, rep.DroppedRefs...), SweptIngest: rep.Swept}
			for _, i := range rep.Removed {
				out.Removed = append(out.Removed, i.Digest.String())
			}
			if g.json {
				return g.printJSON(out)
			}
			verb := "removed"
			if dryRun {
				verb = "would remove"
			}
			for _, i := range rep.Removed {
				fmt.Fprintf(g.stdout, "%s %s (%s)\n", verb, i.Digest, humanBytes(i.Size))
			}
			for _, r := range rep.DroppedRefs {
				fmt.Fprintf(g.stdout, "%s ref %s\n", verb, printable(r))
			}
			fmt.Fprintf(g.stdout, "%s %d blobs, %s; kept %d blobs, %s\n", verb, len(rep.Removed), humanBytes(rep.FreedBytes), rep.Kept, humanBytes(rep.KeptBytes))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&maxSize, "max-size", "", "keep at most this many bytes, e.g. 10GiB or 500MB")
	f.StringVar(&maxAge, "max-age", "", "evict blobs unused for longer than this, e.g. 30d or 12h")
	f.BoolVar(&dryRun, "dry-run", false, "say what would be evicted, change nothing")
	return cmd
}
