package main

import (
	"bufio"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/store"
)

func newClearCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "clear",
		Short: "Remove every cached blob and ref",
		Long: `Remove every blob and every ref from the cache. Files in the cache directory
that layercache did not write are left alone. On a terminal, clear asks first;
in a script it refuses unless given --yes.`,
		Example: `  layercache clear --yes`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if !yes {
				if !isTerminal(g.stdin) {
					return usagef("refusing to clear %s without --yes (stdin is not a terminal)", s.Dir())
				}
				var n int
				var size int64
				if err := s.Walk(ctx, func(i store.Info) error { n++; size += i.Size; return nil }); err != nil {
					return err
				}
				fmt.Fprintf(g.stderr, "Remove %d blobs (%s) and every ref from %s? [y/N] ", n, humanBytes(size), s.Dir())
				line, _ := bufio.NewReader(interruptible(ctx, g.stdin)).ReadString('\n')
				if err := ctx.Err(); err != nil {
					fmt.Fprintln(g.stderr) // end the prompt's line
					return err
				}
				if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
					fmt.Fprintln(g.stderr, "nothing removed")
					return exitError{exitFail}
				}
			}
			if err := s.Clear(ctx); err != nil {
				return err
			}
			if !g.json {
				fmt.Fprintf(g.stdout, "cleared %s\n", s.Dir())
				return nil
			}
			return g.printJSON(map[string]string{"cleared": s.Dir()})
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask")
	return cmd
}
