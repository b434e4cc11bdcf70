package main

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// checkJSON is the stable schema of `layercache check --json`.
type checkJSON struct {
	Images    []remotecache.ImageCheck `json:"images"`
	Blobs     int                      `json:"blobs"` // distinct blobs present and whole
	Bytes     int64                    `json:"bytes"`
	Missing   int                      `json:"missing"`   // problems of each kind, over every image
	Corrupted int                      `json:"corrupted"` //
	Invalid   int                      `json:"invalid"`   //
	OK        bool                     `json:"ok"`        // no problem: the exit status is 0
}

func newCheckCmd(g *globals) *cobra.Command {
	var (
		platforms platformFlags
		from      []string
		jobs      int
	)
	cmd := &cobra.Command{
		Use:   "check IMAGE...",
		Short: "Check, offline, that the cache holds every blob a build of the images reads",
		Long: `Check that the cache alone can serve each IMAGE: its tag is recorded in the
cache's index.json (a digest reference needs no entry there), and its manifest
or index, the platform's manifest, config and layers are all present and hash
to their digests. Nothing is fetched: check never uses the network. Nothing is
changed either: a corrupted blob is reported and left in place.

Run after ` + "`layercache warm`" + ` in CI, check proves that a build step cut off from
the network will not need the registry. The exit status is 0 when every blob
is present and whole, and 1 otherwise; each missing, corrupted or unusable
blob is one line on stdout with its image, platform and media type, and a
summary line ends the report. An image never warmed is reported missing.

Platforms are chosen as warm chooses them: --platform (default linux/amd64),
or --all-platforms, which leaves out attestation manifests unless
--attestations is given. --from FILE reads more references from FILE ("-" for
stdin), one a line, as warm does.`,
		Example: `  # In CI: warm while the network is there, then prove the build needs none
  layercache warm --from images.txt
  layercache check --from images.txt

  # Every platform of an index
  layercache check --all-platforms golang:1.26`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && len(from) == 0 {
				return usagef("check needs at least one IMAGE")
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
			opts := []remotecache.Option{remotecache.WithJobs(jobs), remotecache.WithLogger(g.log)}
			opts = append(opts, popts...)
			ctx := cmd.Context()
			refs, err := imageArgs(ctx, g, args, from)
			if err != nil {
				return err
			}
			if len(refs) == 0 {
				return usagef("check needs at least one IMAGE: %s lists none", strings.Join(from, ", "))
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			rep, err := remotecache.Check(ctx, refs, s, opts...)
			if err != nil {
				return err
			}
			out := checkJSON{Images: rep.Images, Blobs: rep.Blobs, Bytes: rep.Bytes, OK: rep.OK()}
			for _, im := range rep.Images {
				for _, p := range im.Problems {
					switch p.Problem {
					case remotecache.ProblemMissing:
						out.Missing++
					case remotecache.ProblemCorrupted:
						out.Corrupted++
					default:
						out.Invalid++
					}
				}
			}
			if g.json {
				if err := g.printJSON(out); err != nil {
					return err
				}
			} else {
				for _, im := range rep.Images {
					for _, p := range im.Problems {
						fmt.Fprintln(g.stdout, problemLine(im, p))
					}
				}
				fmt.Fprintln(g.stdout, checkSummary(out))
			}
			if !out.OK {
				return exitError{exitFail}
			}
			return nil
		},
	}
	f := cmd.Flags()
	platforms.add(f, "check", "in")
	f.StringArrayVar(&from, "from", nil, "read references from `FILE`, one a line (\"-\" for stdin); may be repeated")
	f.IntVarP(&jobs, "jobs", "j", runtime.GOMAXPROCS(0), "blobs to hash at once")
	return cmd
}

// problemLine is one line of check's report:
//
//	missing: reg/app:v1 [linux/arm64] layer sha256:… (application/vnd.oci.image.layer.v1.tar+gzip)
//	missing: reg/app:v2: the tag was never warmed into this cache
func problemLine(im remotecache.ImageCheck, p remotecache.Problem) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", p.Problem, printable(im.Ref))
	if p.Platform != "" {
		fmt.Fprintf(&b, " [%s]", printable(p.Platform))
	}
	switch {
	case p.Kind == "ref":
		b.WriteString(": the tag was never warmed into this cache")
		return b.String()
	case p.Kind == "platform":
		fmt.Fprintf(&b, ": no image for the platform in index %s", printable(p.Digest))
		return b.String()
	}
	fmt.Fprintf(&b, " %s %s", p.Kind, printable(p.Digest))
	if p.MediaType != "" {
		fmt.Fprintf(&b, " (%s)", printable(p.MediaType))
	}
	if p.Problem == remotecache.ProblemInvalid {
		fmt.Fprintf(&b, ": %s", printable(p.Error))
	}
	return b.String()
}

// checkSummary is the last line of check's report.
func checkSummary(out checkJSON) string {
	head := fmt.Sprintf("checked %d images, %d blobs (%s)", len(out.Images), out.Blobs, humanBytes(out.Bytes))
	if out.OK {
		return head + ": all present and verified"
	}
	var parts []string
	for _, n := range []struct {
		n    int
		what string
	}{{out.Missing, "missing"}, {out.Corrupted, "corrupted"}, {out.Invalid, "unusable"}} {
		if n.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n.n, n.what))
		}
	}
	line := head + ": " + strings.Join(parts, ", ")
	if out.Missing+out.Corrupted > 0 {
		// Warm fetches what is missing and replaces what is corrupted.
		line += "; run `layercache warm` for these images while the registry is reachable"
	}
	return line
}
