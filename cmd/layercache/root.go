package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ocibuild/layercache/pkg/cachedir"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// Exit codes, as crane, ko and the go command use them, and for a command
// that a signal ended, 128 plus the signal's number (130 for SIGINT, 143
// for SIGTERM), as a shell reports a process that the signal killed.
const (
	exitOK         = 0
	exitFail       = 1
	exitUsage      = 2
	exitSignalBase = 128
)

// globals holds the global flags and the streams of one run.
type globals struct {
	cacheDir string
	json     bool
	verbose  bool

	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger

	stores []*store.Store // opened by openStore, closed by run
}

// usageError marks an error the user fixes by changing the command line;
// it exits with status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// exitError carries a non-zero status that is not a failure to report,
// such as verify finding corrupted blobs (its report is the output).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run is the whole command: main only adds the signal context and calls
// os.Exit with its result. Errors are printed as one line on stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	for _, s := range g.stores {
		// Writes the counters of pulls (store.Count); they are advice,
		// so an error is the debug log's.
		if cerr := s.Close(); cerr != nil && g.log != nil {
			g.log.Debug("writing the cache's counters", "dir", s.Dir(), "err", cerr)
		}
	}
	if err == nil {
		return exitOK
	}
	// A command that a signal cancelled fails with the context's error;
	// the signal is the context's cause (see notifyContext).
	var sig signalError
	signalled := errors.As(context.Cause(ctx), &sig)
	var ee exitError
	if errors.As(err, &ee) {
		if signalled {
			return exitSignalBase + int(sig.sig)
		}
		return ee.code
	}
	// One line: the error chain, then what to do about it. Joined errors
	// (warm of several images) print one per line: keep them on this one.
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if signalled {
		// "put -: interrupted" rather than "put -: context canceled".
		msg = strings.ReplaceAll(msg, context.Canceled.Error(), sig.Error())
	}
	// A registry's error text and a ref name can hold terminal escapes.
	msg = printable(msg)
	if h := hint(err); h != "" {
		fmt.Fprintf(stderr, "layercache: %s; %s\n", msg, h)
	} else {
		fmt.Fprintf(stderr, "layercache: %s\n", msg)
	}
	var ue usageError
	switch {
	case signalled:
		return exitSignalBase + int(sig.sig)
	case errors.As(err, &ue) || isCobraUsage(err):
		return exitUsage
	}
	return exitFail
}

// isCobraUsage recognises the command-line errors cobra makes itself.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "invalid argument", "flag needs an argument", "accepts ", "requires at least", "requires at most"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// hint says what to do about an error, where there is something to do.
func hint(err error) string {
	switch {
	case errors.Is(err, store.ErrCorrupted):
		return "run `layercache verify --repair` to remove corrupted blobs; the next warm fetches them again"
	case errors.Is(err, store.ErrNotLayout):
		return "point --cache-dir or " + cachedir.DefaultEnvVar + " at an empty directory or an existing cache"
	case errors.Is(err, store.ErrInvalidDigest):
		return "a digest looks like sha256:<64 lowercase hex digits>"
	case errors.Is(err, remotecache.ErrOffline):
		return "warm the image while the registry is reachable: `layercache warm IMAGE`"
	}
	return ""
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "layercache",
		Short: "A verified, content-addressed cache of OCI image blobs",
		Long: `layercache keeps the blobs of OCI images (layers, configs, manifests) in a
project-rooted cache directory, verified against their digests on every read,
so that image builds stop re-downloading their base images. CI saves and
restores the directory between runs.

The cache directory is, first match wins: --cache-dir; $` + cachedir.DefaultEnvVar + `;
<project root>/_build/ocibuild_cache, where the project root is the nearest
folder above the working directory holding go.mod, rebar.config, mix.exs or
gleam.toml; ./_build/ocibuild_cache.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			g.log = g.newLogger(g.stderr)
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{err}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&g.cacheDir, "cache-dir", "", "cache directory (default: $"+cachedir.DefaultEnvVar+", else <project root>/_build/ocibuild_cache)")
	pf.BoolVar(&g.json, "json", false, "print the result as one JSON document")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log debug messages to stderr")

	root.AddCommand(
		newDirCmd(g),
		newWarmCmd(g),
		newCheckCmd(g),
		newPinCmd(g),
		newImagesCmd(g),
		newLsCmd(g),
		newCatCmd(g),
		newPutCmd(g),
		newVerifyCmd(g),
		newPruneCmd(g),
		newClearCmd(g),
		newStatsCmd(g),
		newServeCmd(g),
		newDemoCmd(g),
	)
	return root
}

// newLogger returns the logger of warnings (and, with -v, debug
// messages), writing to w.
func (g *globals) newLogger(w io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
}

// resolveDir returns the cache directory and how it was chosen; fromFlag
// is true when --cache-dir chose it (a rule that package cachedir, being
// about defaults, does not know).
func (g *globals) resolveDir() (res cachedir.Resolution, fromFlag bool, err error) {
	if g.cacheDir != "" {
		dir, err := filepath.Abs(g.cacheDir)
		if err != nil {
			return cachedir.Resolution{}, false, fmt.Errorf("--cache-dir %s: %w", g.cacheDir, err)
		}
		return cachedir.Resolution{Dir: dir}, true, nil
	}
	res, err = cachedir.Options{}.Resolve()
	return res, false, err
}

// openStore opens the store of the resolved cache directory; opts come
// after the defaults and override them.
func (g *globals) openStore(opts ...store.Option) (*store.Store, error) {
	res, _, err := g.resolveDir()
	if err != nil {
		return nil, err
	}
	s, err := store.Open(res.Dir, append([]store.Option{store.WithLogger(g.log)}, opts...)...)
	if err != nil {
		return nil, err
	}
	g.log.Debug("cache directory", "dir", s.Dir())
	g.stores = append(g.stores, s)
	return s, nil
}

// printJSON writes v as the one JSON document of the command's output.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether w is a terminal (for progress bars and
// prompts).
func isTerminal(v any) bool {
	f, ok := v.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
