// Command bench is layercache's benchmark harness. In one run and one
// process tree it pushes synthetic images to a registry in a child process
// and measures the library against the machine's limits (the ideal
// verified read of the same files) and against ggcr's filesystem cache,
// each comparison a ratio of two figures taken in the same interleaved
// runs. It prints a markdown table on stdout and writes the same results
// as JSON to bench/results/<timestamp>.json.
//
//	make bench         # full: ~256 MiB per image, 1 GiB RSS test, 5 runs
//	make bench-quick   # quick: ~32 MiB per image, 3 runs, under a minute
//
// See bench/README.md for what each figure measures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"syscall"
	"time"
)

func main() {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role, os.Args[1:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// sizes are the image sizes of a mode.
type sizes struct {
	layers        int   // layers of the random and realistic images
	layerSize     int64 // compressed bytes per layer
	rssLayer      int64 // the one layer of the peak-RSS image
	latencyLayers int
	latencySize   int64
	cliBlobs      int
}

var (
	fullSizes  = sizes{layers: 4, layerSize: 64 << 20, rssLayer: 1 << 30, latencyLayers: 8, latencySize: 2 << 20, cliBlobs: 10000}
	quickSizes = sizes{layers: 4, layerSize: 8 << 20, rssLayer: 256 << 20, latencyLayers: 8, latencySize: 2 << 20, cliBlobs: 10000}
)

// latency is what the slow port of the registry adds to every request.
const latency = 20 * time.Millisecond

// bench holds one run of the harness.
type bench struct {
	mode       string
	runs       int
	sizes      sizes
	work       string
	cli        string
	rusage     string
	profileDir string
	profile    *regexp.Regexp // sets to profile
	only       *regexp.Regexp // sets to run
	stderr     io.Writer
	start      time.Time

	reg       *registryProc
	images    map[string]*imageInfo
	imageList []*imageInfo
	stores    map[string]string // image name → a store directory holding it
	seed      uint64            // of the random content
	// ggcrFilled holds the directories of ggcr caches already filled.
	ggcrFilled map[string]bool

	// distribution is the distribution registry binary the mirror rows
	// run, or "" (they run the harness's own mirror).
	distribution string

	waitIdleLimit time.Duration
	lastBusy      float64 // share of the CPU others took during the last set

	machine machine
	rows    []row
	figures []figureRecord
	notes   []string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "smaller images and fewer runs (under a minute)")
	runs := fs.Int("runs", 0, "runs per figure after the warm-up (default 5, quick 3)")
	out := fs.String("out", filepath.Join("bench", "results"), "directory of the JSON results")
	cli := fs.String("cli", "", "layercache binary (default: go build ./cmd/layercache into the work directory)")
	rusage := fs.String("rusage", "", "the bench/rusage helper (default: go build ./bench/rusage into the work directory)")
	work := fs.String("work", "", "work directory for caches (default: a new temp directory, removed at the end)")
	profileDir := fs.String("profile", "", "write CPU profiles of the in-process figures to this directory")
	profileSets := fs.String("profile-sets", ".", "with -profile: regexp of the sets to profile")
	only := fs.String("only", ".", "regexp of the sets to run (see the progress lines on stderr)")
	waitIdle := fs.Duration("wait-idle", 0, "before each set, wait up to this long for other processes to leave the CPU idle")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b := &bench{mode: "full", runs: 5, sizes: fullSizes, cli: *cli, rusage: *rusage, waitIdleLimit: *waitIdle, profileDir: *profileDir, stderr: stderr, start: time.Now(),
		images: map[string]*imageInfo{}, stores: map[string]string{}, ggcrFilled: map[string]bool{}}
	if *quick {
		b.mode, b.runs, b.sizes = "quick", 3, quickSizes
	}
	if *runs > 0 {
		b.runs = *runs
	}
	var err error
	if b.only, err = regexp.Compile(*only); err != nil {
		return fmt.Errorf("-only: %w", err)
	}
	if b.profile, err = regexp.Compile(*profileSets); err != nil {
		return fmt.Errorf("-profile-sets: %w", err)
	}
	if b.profileDir != "" {
		if err := os.MkdirAll(b.profileDir, 0o755); err != nil {
			return err
		}
	}
	b.machine = describeMachine()
	b.distribution = findDistribution()

	if *work != "" {
		b.work = *work
		if err := os.MkdirAll(b.work, 0o755); err != nil {
			return err
		}
	} else {
		if b.work, err = os.MkdirTemp("", "layercache-bench-*"); err != nil {
			return err
		}
		defer os.RemoveAll(b.work)
	}

	if b.reg, err = startRegistry(ctx, latency); err != nil {
		return err
	}
	regStopped := false
	defer func() {
		if !regStopped {
			b.reg.stop()
		}
	}()
	b.logf("registry child: %s (latency proxy %s); work dir %s", b.reg.host, b.reg.slowHost, b.work)

	if err := b.setup(ctx); err != nil {
		return err
	}
	b.measure(ctx)
	if err := ctx.Err(); err != nil {
		return err
	}

	regStopped = true
	b.reg.stop()
	b.machine.finish()
	rep := b.report()
	writeMarkdown(stdout, rep)
	path, err := writeJSON(*out, rep)
	if err != nil {
		return err
	}
	b.logf("results: %s", path)
	return nil
}

// measure runs every set of figures the -only pattern selects. A set that
// fails is reported as an ERROR row; the others go on.
func (b *bench) measure(ctx context.Context) {
	type set struct {
		name string
		fn   func(context.Context) error
	}
	var sets []set
	for _, kind := range []string{kindRandom, kindRealistic} {
		sets = append(sets,
			set{"warm hit Compressed " + kind, func(ctx context.Context) error { return b.warmHitCompressed(ctx, kind) }},
			set{"warm hit Uncompressed " + kind, func(ctx context.Context) error { return b.warmHitUncompressed(ctx, kind) }},
			set{"cold pull " + kind, func(ctx context.Context) error { return b.coldPull(ctx, kind) }},
			set{"adapters " + kind, func(ctx context.Context) error { return b.adapters(ctx, kind) }},
		)
	}
	sets = append(sets,
		set{"warm hit Uncompressed zstd", b.warmHitUncompressedZstd},
		set{"peak RSS", b.peakRSS},
		set{"4 processes", b.concurrentProcesses},
		set{"CLI", b.cliFigures},
		set{"latency", b.latencyWarm},
		set{"cached warm", b.cachedWarm},
		set{"kill and resume", b.killedWarm},
		set{"cut twice", b.cutPull},
		set{"fleet", b.fleet},
		set{"mirror latency", b.mirrorLatency},
		set{"serve warm", b.serveWarm},
		set{"serve fleet", b.serveFleet},
	)
	for _, s := range sets {
		if ctx.Err() != nil {
			return
		}
		if !b.only.MatchString(s.name) {
			continue
		}
		if err := s.fn(ctx); err != nil && !errors.Is(err, context.Canceled) {
			b.addError("-", s.name, "", err)
		}
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.stderr, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func numCPU() int { return runtime.NumCPU() }
