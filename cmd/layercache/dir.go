package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/cachedir"
)

// dirJSON is the stable schema of `layercache dir --json`.
type dirJSON struct {
	Dir         string `json:"dir"`
	Source      string `json:"source"` // flag, env, project root, working directory
	EnvVar      string `json:"envVar,omitempty"`
	ProjectRoot string `json:"projectRoot,omitempty"`
	Marker      string `json:"marker,omitempty"`
}

func newDirCmd(g *globals) *cobra.Command {
	var explain bool
	cmd := &cobra.Command{
		Use:   "dir",
		Short: "Print the cache directory",
		Long: `Print the resolved cache directory. With --explain, also say which rule chose
it: --cache-dir, the environment variable, a project root and its marker file,
or the working directory.`,
		Example: `  # Where is the cache?
  layercache dir

  # And why there?
  layercache dir --explain`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, fromFlag, err := g.resolveDir()
			if err != nil {
				return err
			}
			out := dirJSON{Dir: res.Dir, Source: res.Source.String(), EnvVar: res.EnvVar, ProjectRoot: res.ProjectRoot, Marker: res.Marker}
			if fromFlag {
				out.Source = "flag"
			}
			if g.json {
				return g.printJSON(out)
			}
			fmt.Fprintln(g.stdout, res.Dir)
			if !explain {
				return nil
			}
			switch {
			case fromFlag:
				fmt.Fprintln(g.stdout, "chosen by: the --cache-dir flag")
			case res.Source == cachedir.SourceEnv:
				fmt.Fprintf(g.stdout, "chosen by: the environment variable %s\n", res.EnvVar)
			case res.Source == cachedir.SourceProjectRoot:
				fmt.Fprintf(g.stdout, "chosen by: the project root %s (it holds %s)\n", res.ProjectRoot, res.Marker)
			default:
				fmt.Fprintf(g.stdout, "chosen by: the working directory %s (no project marker above it: %s)\n", res.WorkDir, "go.mod, rebar.config, mix.exs, gleam.toml")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&explain, "explain", false, "say which rule chose the directory")
	return cmd
}

// noArgs is cobra.NoArgs with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args[0])
	}
	return nil
}

// exactArgs is cobra.ExactArgs with a usage error naming the arguments.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s needs %s (got %d arguments)", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}
