package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// warmJSON is the stable schema of `layercache warm --json`.
type warmJSON struct {
	Images   []remotecache.Report `json:"images"`
	Cached   remotecache.Tally    `json:"cached"`
	Fetched  remotecache.Tally    `json:"fetched"`
	Duration time.Duration        `json:"durationNs"`
}

func newWarmCmd(g *globals) *cobra.Command {
	var (
		platforms   platformFlags
		jobs        int
		insecure    bool
		resolveOpts resolveFlags
		from        []string
		mirrors     mirrorOpts
	)
	cmd := &cobra.Command{
		Use:   "warm IMAGE...",
		Short: "Pull images' manifests, configs and layers into the cache",
		Long: `Make sure the cache holds every blob of each IMAGE: its manifest (and index),
config and layers. Cached blobs are re-hashed and kept; corrupted ones are
fetched again; missing ones are fetched from the registry, several at once.
Each image is recorded in the cache's index.json under its reference, so later
pulls can resolve the tag offline; a tag that moved is recorded only once its
new image is whole.

--resolve says when a tag may come from the cache's index.json instead of the
registry: "fallback" (the default) asks the registry and uses the recorded tag
when it cannot be reached (refused, reset or timed-out connections, DNS
failures, a 5xx, or a 429 rate limit); "remote" always asks and fails when it
cannot; "offline" never asks and fetches nothing (as --offline). Blobs are
verified on every read whatever the policy, but a tag is only as trustworthy
as the index.json it comes from: with "fallback", a cache restored from CI
storage is trusted for its tags.

--from FILE reads more references from FILE ("-" for stdin), one a line; a
"#" at the start of a line or after a blank starts a comment, and blank lines
are ignored. ` + "`layercache pin FILE`" + ` pins the tags of such a file to digests.

--all-platforms leaves out the attestation manifests (SBOMs, provenance) that
BuildKit adds to an index under the platform unknown/unknown: no build runs
them. --attestations warms them too.

Credentials come from the Docker config, as with crane and docker.`,
		Example: `  # Warm a base image before a build
  layercache warm cgr.dev/chainguard/static:latest

  # Every platform of a multi-platform image
  layercache warm --all-platforms golang:1.26

  # The images a project lists, one a line
  layercache warm --from images.txt

  # Never use a tag recorded in the cache (for example a restored CI cache)
  layercache warm --resolve remote cgr.dev/chainguard/static:latest

  # One platform, from a local registry over plain HTTP
  layercache warm --platform linux/arm64 --insecure registry.local:5000/base:1`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && len(from) == 0 {
				return usagef("warm needs at least one IMAGE")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			popts, err := platforms.options()
			if err != nil {
				return err
			}
			if jobs < 1 {
				return usagef("--jobs must be at least 1, got %d", jobs)
			}
			policy, err := resolveOpts.policy(cmd.Flags())
			if err != nil {
				return err
			}
			var nameOpts []name.Option
			if insecure {
				nameOpts = append(nameOpts, name.Insecure)
			}
			refs, err := imageArgs(cmd.Context(), g, args, from, nameOpts...)
			if err != nil {
				return err
			}
			if len(refs) == 0 {
				return usagef("warm needs at least one IMAGE: %s lists none", strings.Join(from, ", "))
			}
			opts := []remotecache.Option{
				remotecache.WithKeychain(authn.DefaultKeychain),
				remotecache.WithUserAgent("layercache"),
				remotecache.WithJobs(jobs),
				remotecache.WithLogger(g.log),
			}
			opts = append(opts, popts...)
			opts = append(opts, remotecache.WithResolve(policy))
			mopts, err := mirrors.options(refs, g.log)
			if err != nil {
				return err
			}
			opts = append(opts, mopts...)
			s, err := g.openStore()
			if err != nil {
				return err
			}
			start := time.Now()
			out := warmJSON{Images: []remotecache.Report{}} // [], never null, as in `images --json`
			var errs []error
			for _, ref := range refs {
				prog := newProgress(g.stderr, !g.json && isTerminal(g.stderr))
				rep, err := remotecache.Warm(cmd.Context(), ref, s, append(opts, remotecache.WithProgress(prog.event))...)
				prog.wait()
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if rep.Platforms == nil {
					rep.Platforms = []string{}
				}
				out.Images = append(out.Images, rep)
				out.Cached.Blobs += rep.Cached.Blobs
				out.Cached.Bytes += rep.Cached.Bytes
				out.Fetched.Blobs += rep.Fetched.Blobs
				out.Fetched.Bytes += rep.Fetched.Bytes
				if !g.json {
					fmt.Fprintf(g.stdout, "%s@%s: %s\n", ref.Context().Name(), rep.Digest, summary(rep.Cached, rep.Fetched, rep.Duration, rep.Platforms))
				}
			}
			out.Duration = time.Since(start)
			if g.json {
				if err := g.printJSON(out); err != nil {
					return err
				}
			} else if len(out.Images) > 1 {
				// A total of what was warmed: of one image it would
				// repeat its line, of none it would read as a result.
				fmt.Fprintf(g.stdout, "total: %s\n", summary(out.Cached, out.Fetched, out.Duration, nil))
			}
			return errors.Join(errs...)
		},
	}
	f := cmd.Flags()
	platforms.add(f, "warm", "from")
	f.StringArrayVar(&from, "from", nil, "read references from `FILE`, one a line (\"-\" for stdin); may be repeated")
	f.IntVarP(&jobs, "jobs", "j", remotecache.DefaultJobs, "blobs to fetch or verify at once")
	f.BoolVar(&insecure, "insecure", false, "allow plain HTTP to the registry")
	resolveOpts.add(f)
	addMirrorFlags(cmd, &mirrors)
	return cmd
}

// summary says where the blobs came from and how long it took.
func summary(cached, fetched remotecache.Tally, d time.Duration, platforms []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d blobs (%s) from the cache, %d blobs (%s) from the registry, in %s",
		cached.Blobs, humanBytes(cached.Bytes), fetched.Blobs, humanBytes(fetched.Bytes), d.Round(time.Millisecond))
	if len(platforms) > 0 {
		fmt.Fprintf(&b, " [%s]", strings.Join(printables(platforms), ", "))
	}
	return b.String()
}
