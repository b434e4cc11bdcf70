package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newImagesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "images",
		Short: "List the warmed images recorded in the cache's index.json",
		Long: `List the references warmed into the cache, with the digest they resolved to,
the platforms cached, the bytes the cache holds for them and their last use.
An image marked incomplete misses blobs: it lost some (to prune, say), or a
warm of it failed or is still running. Warm it again. The attestation manifests
(SBOMs, provenance) that BuildKit adds to an index are not platforms: those
the cache holds (warm --attestations) are counted apart.`,
		Example: `  layercache images
  layercache images --json | jq -r '.[].ref'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			c, err := loadCatalog(cmd.Context(), s)
			if err != nil {
				return err
			}
			if g.json {
				out := c.images
				if out == nil {
					out = []imageEntry{}
				}
				for i := range out {
					if out[i].Platforms == nil {
						out[i].Platforms = []string{}
					}
				}
				return g.printJSON(out)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REF\tDIGEST\tPLATFORMS\tSIZE\tLAST USED")
			now := time.Now()
			for _, e := range c.images {
				size := humanBytes(e.Size)
				if !e.Complete {
					size += " (incomplete)"
				}
				platforms := strings.Join(printables(e.Platforms), ",")
				if e.Attestations > 0 {
					platforms += fmt.Sprintf(" (+%d attestations)", e.Attestations)
				}
				last, _ := time.Parse(time.RFC3339, e.LastUsed)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", printable(e.Ref), shortDigest(e.Digest), platforms, size, ago(now, last))
			}
			return tw.Flush()
		},
	}
}
