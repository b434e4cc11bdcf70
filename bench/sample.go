package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"time"
)

// Units of figures.
const (
	unitSeconds = "s"
	unitBytes   = "B" // peak RSS
	unitRatio   = "x" // bytes served ÷ image bytes
)

// variant is one thing measured in a set: a figure.
type variant struct {
	name  string
	unit  string
	bytes int64 // bytes processed per run, for a throughput; 0 if none
	// prep runs before every run, untimed: a fresh cache directory, a
	// sync of dirty pages.
	prep func(ctx context.Context) error
	// run does the work once and returns the value measured.
	run func(ctx context.Context) (float64, error)
	// files are faulted into the page cache before every run, untimed,
	// for figures that are reads from the page cache (see pagecache.go).
	files []string
	// inProcess variants are profiled with -profile; children are not.
	inProcess bool
}

// timed turns fn into a variant's run that measures its wall time.
func timed(fn func(ctx context.Context) error) func(ctx context.Context) (float64, error) {
	return func(ctx context.Context) (float64, error) {
		start := time.Now()
		err := fn(ctx)
		return time.Since(start).Seconds(), err
	}
}

// stat is a figure: the summary of its samples.
type stat struct {
	Name    string    `json:"name"`
	Unit    string    `json:"unit"`
	Median  float64   `json:"median"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
	Samples []float64 `json:"samples"`
	Bytes   int64     `json:"bytesPerRun,omitempty"`
	// DiskRead is what the timed runs read from block devices, summed:
	// for a warm-hit figure anything but 0 means the page cache lost some
	// of the files during the run.
	DiskRead int64 `json:"diskReadBytes"`
}

func (s *stat) summarise() {
	v := slices.Clone(s.Samples)
	slices.Sort(v)
	if len(v) == 0 {
		return
	}
	s.Min, s.Max = v[0], v[len(v)-1]
	if len(v)%2 == 1 {
		s.Median = v[len(v)/2]
	} else {
		s.Median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
}

// sample measures the variants of one set: one warm-up run of each, then
// b.runs rounds, each running every variant once. The order rotates from
// round to round (AB, BA, AB, ...) so that drift of the machine (page
// cache, CPU frequency, writeback) falls on every variant alike.
func (b *bench) sample(ctx context.Context, set string, vs ...variant) ([]*stat, error) {
	stats := make([]*stat, len(vs))
	for i, v := range vs {
		stats[i] = &stat{Name: v.name, Unit: v.unit, Bytes: v.bytes}
	}
	b.waitIdle(ctx, b.waitIdleLimit)
	start := time.Now()
	meter := b.startMeter()
	for round := -1; round < b.runs; round++ {
		for k := range vs {
			i := (k + max(round, 0)) % len(vs)
			val, disk, err := b.runOnce(ctx, vs[i])
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", set, vs[i].name, err)
			}
			if round >= 0 {
				stats[i].Samples = append(stats[i].Samples, val)
				stats[i].DiskRead += disk
			}
		}
	}
	b.lastBusy = b.foreign(meter)
	for _, s := range stats {
		s.summarise()
		b.figures = append(b.figures, figureRecord{Set: set, Busy: b.lastBusy, stat: s})
	}
	b.logf("%-34s %s, other processes took %.0f%% of the CPU", set, time.Since(start).Round(100*time.Millisecond), 100*b.lastBusy)
	for _, s := range stats {
		b.logf("    %-44s %s", s.Name, formatStat(s))
	}
	if b.profileDir != "" && b.profile.MatchString(set) {
		if err := b.profileSet(ctx, set, vs); err != nil {
			return nil, err
		}
	}
	return stats, nil
}

// runOnce prepares and runs v once, and returns its value and the bytes
// it read from block devices (its own and its children's).
func (b *bench) runOnce(ctx context.Context, v variant) (float64, int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if err := prepare(ctx, v); err != nil {
		return 0, 0, err
	}
	disk := diskReadBytes()
	val, err := runWithin(ctx, v.run)
	return val, diskReadBytes() - disk, err
}

// runTimeout bounds one run. The longest runs take seconds; a run past
// this is a hang (a deadlocked reader ignores its context), reported as
// an error so that the other sets still run. The stuck goroutine is left
// behind.
const runTimeout = 3 * time.Minute

func runWithin(ctx context.Context, run func(context.Context) (float64, error)) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	type result struct {
		val float64
		err error
	}
	done := make(chan result, 1)
	go func() {
		val, err := run(ctx)
		done <- result{val, err}
	}()
	select {
	case r := <-done:
		return r.val, r.err
	case <-ctx.Done():
		return 0, fmt.Errorf("no result after %s: hung? (%w)", runTimeout, ctx.Err())
	}
}

// prepare does the untimed work before a run of v.
func prepare(ctx context.Context, v variant) error {
	if v.prep != nil {
		if err := v.prep(ctx); err != nil {
			return fmt.Errorf("preparing: %w", err)
		}
	}
	if err := cacheFiles(v.files...); err != nil {
		return err
	}
	// Garbage of the previous run is collected now, not during this one.
	runtime.GC()
	return nil
}

// The CPU profiles of a variant cover at least profileRuns extra runs and
// at least profileTime of them, so that quick-mode runs of a few
// milliseconds still give enough samples.
const (
	profileRuns = 3
	profileTime = 2 * time.Second
)

// profileSet writes CPU profiles of each in-process variant of the set,
// from extra runs that do not count in the figures: one file per run, so
// that the untimed preparation stays out of them. `go tool pprof` merges
// the files it is given.
func (b *bench) profileSet(ctx context.Context, set string, vs []variant) error {
	for _, v := range vs {
		if !v.inProcess {
			continue
		}
		base := filepath.Join(b.profileDir, fileName(set+"."+v.name))
		var spent time.Duration
		i := 0
		for ; i < profileRuns || spent < profileTime; i++ {
			if err := prepare(ctx, v); err != nil {
				return err
			}
			f, err := os.Create(fmt.Sprintf("%s.%d.prof", base, i))
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				f.Close()
				return err
			}
			start := time.Now()
			_, err = v.run(ctx)
			spent += time.Since(start)
			pprof.StopCPUProfile()
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
		b.logf("    profile: %s.*.prof (%d runs)", base, i)
	}
	return nil
}

var unsafeFileChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func fileName(s string) string { return unsafeFileChars.ReplaceAllString(s, "_") }
