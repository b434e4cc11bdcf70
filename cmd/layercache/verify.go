package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/ocibuild/layercache/pkg/store"
)

// verifyJSON is the stable schema of `layercache verify --json`.
type verifyJSON struct {
	Blobs     int           `json:"blobs"`     // blobs checked
	Bytes     int64         `json:"bytes"`     // bytes hashed
	Corrupted []corruptJSON `json:"corrupted"` // blobs that failed
	Repaired  bool          `json:"repaired"`  // failed blobs were removed
	Refs      []string      `json:"droppedRefs"`
	Dangling  []string      `json:"danglingRefs"` // refs whose manifest is missing or corrupted
}

type corruptJSON struct {
	Digest string `json:"digest"`
	Error  string `json:"error"`
}

func newVerifyCmd(g *globals) *cobra.Command {
	var (
		repair bool
		jobs   int
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-hash every cached blob and report corrupted ones",
		Long: `Re-hash every blob in the cache, several at once, and report those whose bytes
do not match their digest, and every ref of index.json whose manifest is
missing or corrupted (a dangling ref). Without --repair, both are left in place
and the exit status is 1 if any were found. With --repair, corrupted blobs are
removed (the next warm or pull fetches them again), refs whose manifest is gone
are dropped, and the exit status is 0.`,
		Example: `  # In CI, after restoring the cache
  layercache verify --repair`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if jobs < 1 {
				return usagef("--jobs must be at least 1, got %d", jobs)
			}
			ctx := cmd.Context()
			s, err := g.openStore()
			if err != nil {
				return err
			}
			out := verifyJSON{Corrupted: []corruptJSON{}, Refs: []string{}, Dangling: []string{}}
			prog, bar, err := verifyProgress(ctx, g, s)
			if err != nil {
				return err
			}
			err = s.VerifyAll(ctx, jobs, func(b store.Info, err error) {
				out.Blobs++
				out.Bytes += b.Size
				if bar != nil {
					bar.IncrInt64(b.Size)
				}
				if errors.Is(err, store.ErrCorrupted) {
					out.Corrupted = append(out.Corrupted, corruptJSON{Digest: b.Digest.String(), Error: err.Error()})
				}
			})
			if prog != nil {
				bar.SetTotal(bar.Current(), true)
				prog.Wait()
			}
			if err != nil {
				return err
			}
			if out.Dangling, err = danglingRefs(cmd, s, out.Corrupted); err != nil {
				return err
			}
			if repair && (len(out.Corrupted) > 0 || len(out.Dangling) > 0) {
				if out.Refs, err = repairVerify(ctx, s, out.Corrupted); err != nil {
					return err
				}
				out.Repaired = true
			}
			if err := printVerify(g, out, repair); err != nil {
				return err
			}
			if (len(out.Corrupted) > 0 || len(out.Dangling) > 0) && !repair {
				return exitError{exitFail}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "remove corrupted blobs (and refs whose manifest they were)")
	cmd.Flags().IntVarP(&jobs, "jobs", "j", runtime.GOMAXPROCS(0), "blobs to hash at once")
	return cmd
}

// repairVerify removes the corrupted blobs verify found, then drops the
// refs whose manifest is gone, and returns the refs it dropped.
func repairVerify(ctx context.Context, s *store.Store, corrupted []corruptJSON) ([]string, error) {
	for _, c := range corrupted {
		if err := s.Delete(ctx, digestOf(c.Digest)); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	rep, err := s.Prune(ctx, store.Policy{})
	if err != nil {
		return nil, err
	}
	return append([]string{}, rep.DroppedRefs...), nil
}

// printVerify writes verify's report: one --json document, or a line per
// corrupted blob and ref and a closing summary.
func printVerify(g *globals, out verifyJSON, repair bool) error {
	if g.json {
		return g.printJSON(out)
	}
	for _, c := range out.Corrupted {
		fmt.Fprintf(g.stdout, "corrupted: %s\n", printable(c.Error))
	}
	if !repair {
		for _, r := range out.Dangling {
			fmt.Fprintf(g.stdout, "dangling ref: %s\n", r)
		}
	}
	for _, r := range out.Refs {
		fmt.Fprintf(g.stdout, "dropped ref: %s\n", printable(r))
	}
	switch {
	case len(out.Corrupted) == 0 && len(out.Dangling) > 0 && !repair:
		fmt.Fprintf(g.stdout, "verified %d blobs (%s): all good, but %d refs name a missing manifest; run `layercache verify --repair` to drop them\n", out.Blobs, humanBytes(out.Bytes), len(out.Dangling))
	case len(out.Corrupted) == 0:
		fmt.Fprintf(g.stdout, "verified %d blobs (%s): all good\n", out.Blobs, humanBytes(out.Bytes))
	case repair:
		fmt.Fprintf(g.stdout, "verified %d blobs (%s): removed %d corrupted\n", out.Blobs, humanBytes(out.Bytes), len(out.Corrupted))
	default:
		fmt.Fprintf(g.stdout, "verified %d blobs (%s): %d corrupted; run `layercache verify --repair` to remove them\n", out.Blobs, humanBytes(out.Bytes), len(out.Corrupted))
	}
	return nil
}

// verifyProgress returns a progress bar of the bytes verify hashes, on a
// terminal and without --json; otherwise none. Its total comes from a walk
// of the store, which reads no blob.
func verifyProgress(ctx context.Context, g *globals, s *store.Store) (*mpb.Progress, *mpb.Bar, error) {
	if g.json || !isTerminal(g.stderr) {
		return nil, nil, nil
	}
	var total int64
	if err := s.Walk(ctx, func(i store.Info) error {
		total += i.Size
		return nil
	}); err != nil {
		return nil, nil, err
	}
	prog := mpb.New(mpb.WithOutput(g.stderr), mpb.WithWidth(40))
	bar := prog.New(total, mpb.BarStyle(),
		mpb.PrependDecorators(decor.Name("verify"), decor.CountersNoUnit(" %d/%d blobs", decor.WCSyncSpace)),
		mpb.AppendDecorators(decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")))
	return prog, bar, nil
}

// danglingRefs lists the refs of index.json whose manifest is not in the
// store, or is among the corrupted blobs just found.
func danglingRefs(cmd *cobra.Command, s *store.Store, corrupted []corruptJSON) ([]string, error) {
	refs, err := s.Refs(cmd.Context())
	if err != nil {
		return nil, err
	}
	bad := map[string]bool{}
	for _, c := range corrupted {
		bad[c.Digest] = true
	}
	out := []string{}
	for _, r := range refs {
		_, err := s.Stat(cmd.Context(), r.Digest)
		switch {
		case errors.Is(err, store.ErrNotFound) || (err == nil && bad[r.Digest.String()]):
			out = append(out, r.Annotations[ocispec.AnnotationRefName])
		case err != nil:
			return nil, err
		}
	}
	return out, nil
}
