package main

import (
	"io"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

func newCatCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cat DIGEST",
		Short: "Write a cached blob to stdout, verified",
		Long: `Write the blob named DIGEST to stdout. The blob is hashed before its first
byte is written, so a corrupted blob writes nothing, is removed from the cache,
and exits with status 1.`,
		Example: `  # A manifest, pretty-printed
  layercache cat sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b | jq .`,
		Args: exactArgs(1, "one DIGEST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := digest.Digest(args[0])
			if err := layout.Validate(d); err != nil {
				return usageError{err}
			}
			// The error of a corrupted blob is the one line to print:
			// the store's warning that it removed the blob would be a
			// second (still shown with --verbose).
			var opts []store.Option
			if !g.verbose {
				opts = append(opts, store.WithLogger(nil))
			}
			s, err := g.openStore(opts...)
			if err != nil {
				return err
			}
			rc, _, err := s.OpenVerified(cmd.Context(), d)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(g.stdout, rc)
			return err
		},
	}
}
