package main

import (
	"bufio"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/store"
)

// blobJSON is the stable schema of one entry of `layercache ls --json`.
type blobJSON struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"mediaType,omitempty"`
	LastUsed  string `json:"lastUsed"` // RFC 3339
}

func newLsCmd(g *globals) *cobra.Command {
	var sortBy string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List every cached blob",
		Long: `List every blob in the cache with its size, its media type where a warmed
image's manifest names it, and its last use (refreshed at most hourly).`,
		Example: `  # Biggest first
  layercache ls --sort size

  # Least recently used first: what prune evicts first
  layercache ls --sort last-used`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			less, ok := blobOrders[sortBy]
			if !ok {
				return usagef("--sort %q: want size, last-used or digest", sortBy)
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			var blobs []store.Info
			if err := s.Walk(cmd.Context(), func(i store.Info) error { blobs = append(blobs, i); return nil }); err != nil {
				return err
			}
			sort.SliceStable(blobs, func(i, j int) bool { return less(blobs[i], blobs[j]) })
			c, err := loadCatalog(cmd.Context(), s)
			if err != nil {
				// A broken index.json must not hide the blobs.
				g.log.Warn("cannot read index.json; media types unknown", "err", err)
				c = &catalog{}
			}
			if g.json {
				out := make([]blobJSON, 0, len(blobs))
				for _, b := range blobs {
					out = append(out, blobJSON{Digest: b.Digest.String(), Size: b.Size, MediaType: c.mediaTypes[b.Digest], LastUsed: b.LastUsed.UTC().Format(time.RFC3339)})
				}
				return g.printJSON(out)
			}
			// tabwriter writes each cell and its padding apart: buffered,
			// the table is a few write calls, not eight per line.
			bw := bufio.NewWriterSize(g.stdout, 64<<10)
			tw := tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DIGEST\tSIZE\tLAST USED\tMEDIA TYPE")
			now := time.Now()
			for _, b := range blobs {
				mt := printable(c.mediaTypes[b.Digest])
				if mt == "" {
					mt = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Digest, humanBytes(b.Size), ago(now, b.LastUsed), mt)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return bw.Flush()
		},
	}
	cmd.Flags().StringVar(&sortBy, "sort", "digest", "order: size (largest first), last-used (oldest first) or digest")
	return cmd
}

var blobOrders = map[string]func(a, b store.Info) bool{
	"digest":    func(a, b store.Info) bool { return a.Digest < b.Digest },
	"size":      func(a, b store.Info) bool { return a.Size > b.Size },
	"last-used": func(a, b store.Info) bool { return a.LastUsed.Before(b.LastUsed) },
}
