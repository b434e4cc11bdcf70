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
			ctx := cmd.Context()
			// Reads of stdin, a FIFO or a device may block for ever;
			// interruptible lets a signal end them. A regular file
			// is read as it is, without the extra copy.
			var r io.Reader
			if args[0] == "-" {
				r = interruptible(ctx, g.stdin)
			} else {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
				if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
					r = interruptible(ctx, f)
				}
			}
			d, err := s.Put(ctx, r)
			if err != nil {
				return fmt.Errorf("put %s: %w", args[0], err)
			}
			if g.json {
				info, err := s.Stat(ctx, d)
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
