// Package scaffold is what the examples share around the few lines a tool
// author copies: a main that maps errors to exit codes, the -serve flag's
// in-process registries, the report of what came from the registry and
// what from the cache, and writing the result to an OCI image layout.
//
// It is scaffolding for the examples, not part of layercache: a tool that
// embeds the cache needs none of it.
package scaffold

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/examples/internal/localregistry"
	"github.com/ocibuild/layercache/examples/internal/wirecount"
	"github.com/ocibuild/layercache/pkg/store"
)

// UsageError is an error in the command line: Main exits 2 for it.
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// Main runs run with the process's arguments and a context that SIGINT
// cancels, and exits as a command does: 0 on success or -h, 2 for a
// UsageError, 1 for any other error, which it prints after "name: ".
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	case errors.As(err, new(UsageError)):
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Parse parses args with flags, and returns a UsageError for a bad flag or
// an argument left over (flag.ErrHelp for -h, as it is).
func Parse(flags *flag.FlagSet, args []string) error {
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return UsageError{err.Error()}
	}
	if flags.NArg() > 0 {
		return UsageError{fmt.Sprintf("unexpected argument %q", flags.Arg(0))}
	}
	return nil
}

// Refs returns the base to pull and where to push (nil: nowhere). Base
// left empty gets an in-process registry holding a synthetic base; dst
// left empty gets one of its own, at dstRepo, if serve is set. cleanup
// stops the registries started.
func Refs(ctx context.Context, base, dst, dstRepo string, serve bool, stderr io.Writer) (baseRef, dstRef name.Reference, cleanup func(), err error) {
	var regs []*localregistry.Registry
	cleanup = func() {
		for _, r := range regs {
			r.Close()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	// serveRef starts a registry and returns repoAndTag on it.
	serveRef := func(repoAndTag string) (name.Reference, error) {
		reg, err := localregistry.Start()
		if err != nil {
			return nil, err
		}
		regs = append(regs, reg)
		return reg.Ref(repoAndTag)
	}

	if base != "" {
		if baseRef, err = name.ParseReference(base); err != nil {
			return nil, nil, nil, err
		}
	} else {
		if baseRef, err = serveRef("base/synthetic:latest"); err != nil {
			return nil, nil, nil, err
		}
		if err = localregistry.PushBase(ctx, baseRef); err != nil {
			return nil, nil, nil, err
		}
		fmt.Fprintf(stderr, "base: %s (synthetic, in-process registry)\n", baseRef)
	}

	switch {
	case dst != "":
		if dstRef, err = name.ParseReference(dst); err != nil {
			return nil, nil, nil, err
		}
	case serve:
		// A registry apart from the base's, as when the base comes from
		// Docker Hub and the result goes to ghcr.io: the base's layers must
		// be uploaded, so they are read, and the cache serves them. (Pushed
		// to the base's registry, they would be found there or mounted, and
		// not read at all.)
		if dstRef, err = serveRef(dstRepo); err != nil {
			return nil, nil, nil, err
		}
		fmt.Fprintf(stderr, "dst: %s (in-process registry)\n", dstRef)
	}
	return baseRef, dstRef, cleanup, nil
}

// Meter measures a run: the blob bytes that came over the wire, through
// Transport, and the growth of the store's counters.
type Meter struct {
	// Transport counts the blob bytes read through it; hand it to
	// remotecache.WithTransport.
	Transport *wirecount.Transport

	s      *store.Store
	before store.Stats
}

// NewMeter starts measuring a run that uses s.
func NewMeter(ctx context.Context, s *store.Store) *Meter {
	before, _ := s.Stats(ctx) // counters are advice: a read-only cache gives zeros
	return &Meter{Transport: &wirecount.Transport{Inner: remote.DefaultTransport}, s: s, before: before}
}

// Report writes what came from the registry and what from the cache. The
// registry's share is counted on the wire. The cache's is the growth of
// the store's counters, which count a blob when it is opened (and
// verified): the manifest and config too, and a layer read twice (push,
// then layout) twice. The counters are shared by every process using the
// cache, so the growth is this run's only if it ran alone.
func (m *Meter) Report(ctx context.Context, stderr io.Writer, start time.Time) {
	after, _ := m.s.Stats(ctx)
	fmt.Fprintf(stderr, "base blobs from registry: %d bytes (%d blobs)\n", m.Transport.BlobBytes(), m.Transport.Blobs())
	fmt.Fprintf(stderr, "from cache: %d bytes (%d blobs, verified)\n", after.HitBytes-m.before.HitBytes, after.Hits-m.before.Hits)
	fmt.Fprintf(stderr, "took %s\n", time.Since(start).Round(time.Millisecond))
}

// WriteLayout writes img to the OCI image layout in dir, creating it if
// needed, and points the ref name refName at it, replacing the image that
// name pointed at before: running twice leaves one entry, not two.
func WriteLayout(dir string, img v1.Image, refName string) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return err
		}
	}
	return p.ReplaceImage(img, match.Name(refName), layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": refName,
	}))
}
