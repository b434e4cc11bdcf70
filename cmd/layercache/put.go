package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// putJSON is the stable schema of `layercache put --json`.
type putJSON struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

func newPutCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "put FILE|-",
		Short: "Store a file (or stdin) as a blob and print its digest",
		Long: `Store the bytes of FILE, or of stdin for "-", as a blob named by their sha256
digest, computed from the bytes. Print only the digest.`,
		Example: `  layercache put layer.tar.gz
  tar -cz dir | layercache put -`,
		Args: exactArgs(1, "one FILE or -"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			var r io.Reader = g.stdin
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			d, err := s.Put(cmd.Context(), r)
			if err != nil {
				return fmt.Errorf("put %s: %w", args[0], err)
			}
			if g.json {
				info, err := s.Stat(cmd.Context(), d)
				if err != nil {
					return err
				}
				return g.printJSON(putJSON{Digest: d.String(), Size: info.Size})
			}
			fmt.Fprintln(g.stdout, d)
			return nil
		},
	}
}
