package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// Figures of downloads that resume (issue 13): after a SIGKILL of a
// `layercache warm`, and after cuts of the connection within one pull.

// sideStat is a figure a set measures beside its timed variants: the
// values one variant's runs record on the side (bytes served), the first
// of which, the warm-up's, does not count.
func (b *bench) sideStat(set, name, unit string, values []float64) *stat {
	s := &stat{Name: name, Unit: unit}
	if len(values) > 1 {
		s.Samples = values[1:]
	}
	s.summarise()
	b.figures = append(b.figures, figureRecord{Set: set, Busy: b.lastBusy, stat: s})
	b.logf("    %-44s %s", s.Name, formatStat(s))
	return s
}

// killAt is where in the layer the first warm is killed, as a share of
// the layer's bytes served by the registry.
const killAt = 0.5

// killedWarm: a `layercache warm` (the built CLI) of the one-layer image
// of the peak-RSS figure (1 GiB, 256 MiB in quick mode) is killed with
// SIGKILL once the registry has served half the layer, then a second warm
// runs. The registry's blob bytes over both ÷ the image's, and the second
// warm's time against a full cold warm. For context, the same with the
// partial file removed before the second warm: what a pull that cannot
// resume costs.
func (b *bench) killedWarm(ctx context.Context) error {
	im, err := b.image(ctx, "rss")
	if err != nil {
		return err
	}
	dir := filepath.Join(b.work, "kill-store")
	defer os.RemoveAll(dir)
	ref := im.tag.String()
	warm := func(ctx context.Context) error { return b.runCLI(ctx, "--cache-dir", dir, "warm", ref) }
	// killed runs a warm until the registry has served killAt of the
	// image, then kills it.
	killed := func(ctx context.Context) error {
		if err := freshStore(dir); err != nil {
			return err
		}
		if err := b.reg.reset(); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, b.cli, "--cache-dir", dir, "warm", ref)
		var stderr limitedBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		waited := b.reg.waitBytes(ctx, int64(killAt*float64(im.layerBytes())))
		cmd.Process.Kill()
		err := cmd.Wait()
		if waited != nil {
			return fmt.Errorf("%w (warm: %v: %s)", waited, err, stderr.String())
		}
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != -1 {
			return fmt.Errorf("the warm to kill ended before it was killed: %v: %s", err, stderr.String())
		}
		return nil
	}
	var resumedBytes, restartedBytes []float64
	served := func(to *[]float64, fn func(context.Context) error) func(context.Context) error {
		return func(ctx context.Context) error {
			if err := fn(ctx); err != nil {
				return err
			}
			c, err := b.reg.counters()
			*to = append(*to, float64(c.BlobBytes)/float64(im.blobBytes()))
			return err
		}
	}
	n := im.layerBytes()
	resumed := variant{name: "second warm after SIGKILL at 50%", unit: unitSeconds, bytes: n,
		prep: killed, run: timed(served(&resumedBytes, warm))}
	restarted := variant{name: "second warm, partial file removed", unit: unitSeconds, bytes: n,
		prep: func(ctx context.Context) error {
			if err := killed(ctx); err != nil {
				return err
			}
			return removePartials(dir)
		},
		run: timed(served(&restartedBytes, warm))}
	cold := variant{name: "full cold warm", unit: unitSeconds, bytes: n,
		prep: func(context.Context) error { return freshStore(dir) }, run: timed(warm)}
	const set = "kill and resume"
	st, err := b.sample(ctx, set, resumed, cold, restarted)
	if err != nil {
		return err
	}
	resumedSt := b.sideStat(set, "registry bytes ÷ image bytes, with resume", unitRatio, resumedBytes)
	restartedSt := b.sideStat(set, "registry bytes ÷ image bytes, partial removed", unitRatio, restartedBytes)
	size := formatValue(float64(n), unitBytes)
	b.addRow("10", fmt.Sprintf("`layercache warm` of one %s layer killed (SIGKILL) at %.0f%%, then a second warm: registry blob bytes ÷ image bytes, resumed (A) vs partial file removed (B)", size, 100*killAt), kindRandom,
		resumedSt, restartedSt, atMostValue(1.10, "≤ 1.10 (no resume: ~1.5)"))
	b.addRow("10'", fmt.Sprintf("the same: time of the second warm (A) vs a full cold warm (B), %s layer", size), kindRandom,
		st[0], st[1], atMostTimes(0.6, "≤ 0.6", "A time ÷ B time"))
	return nil
}

// removePartials removes the partial downloads a killed warm left in the
// store's ingest folder, and their hash states.
func removePartials(dir string) error {
	ms, err := filepath.Glob(filepath.Join(dir, "ingest", "*.partial"))
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		return errors.New("the killed warm left no partial file in ingest/")
	}
	states, err := filepath.Glob(filepath.Join(dir, "ingest", "*.hashstate"))
	if err != nil {
		return err
	}
	for _, m := range append(ms, states...) {
		if err := os.Remove(m); err != nil {
			return err
		}
	}
	return nil
}

// runCLI runs the built layercache CLI, its output discarded.
func (b *bench) runCLI(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, b.cli, args...)
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("layercache %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return nil
}

// cutFractions are where the cut port ends the first and the second
// response of each layer.
var cutFractions = []float64{0.3, 0.7}

// cutPull: a cold pull (remotecache.Image, every layer's Compressed read
// fully, as row 3) whose connection is cut twice within each layer, at
// 30 % of the layer in the first response and at 70 % in the second,
// against the same pull uncut. The registry's blob bytes ÷ the image's,
// and the time.
func (b *bench) cutPull(ctx context.Context) error {
	im, err := b.image(ctx, kindRandom)
	if err != nil {
		return err
	}
	cutRef, err := im.byTag(b.reg.cutHost)
	if err != nil {
		return err
	}
	if err := b.reg.setCuts(cutFractions...); err != nil {
		return err
	}
	dir := filepath.Join(b.work, "cut-store")
	defer os.RemoveAll(dir)
	var s *store.Store
	prep := func(context.Context) error {
		if err := freshStore(dir); err != nil {
			return err
		}
		var err error
		if s, err = store.Open(dir); err != nil {
			return err
		}
		// Reset also forgets the responses the cut port counted, so that
		// every run's layers are cut again.
		return b.reg.reset()
	}
	var cutBytes, uncutBytes []float64
	var gets [2]int64 // blob GETs of the last pull, cut and uncut
	pull := func(ref name.Reference, to *[]float64, gets *int64) func(context.Context) error {
		return func(ctx context.Context) error {
			img, err := remotecache.Image(ref, s, remotecache.WithContext(ctx))
			if err != nil {
				return err
			}
			if err := drainCompressed(img); err != nil {
				return err
			}
			if err := checkStored(ctx, s, im); err != nil {
				return err
			}
			c, err := b.reg.counters()
			*to = append(*to, float64(c.BlobBytes)/float64(im.blobBytes()))
			*gets = c.BlobGets
			return err
		}
	}
	n := im.layerBytes()
	cut := variant{name: "remotecache.Image, cold, cut twice per layer", unit: unitSeconds, bytes: n, inProcess: true,
		prep: prep, run: timed(pull(cutRef, &cutBytes, &gets[0]))}
	uncut := variant{name: "remotecache.Image, cold, uncut", unit: unitSeconds, bytes: n, inProcess: true,
		prep: prep, run: timed(pull(im.tag, &uncutBytes, &gets[1]))}
	const set = "cut twice"
	st, err := b.sample(ctx, set, cut, uncut)
	if err != nil {
		return err
	}
	b.note(fmt.Sprintf("row 11: a cut pull of the %d-layer image made %d blob GETs, an uncut one %d", len(im.layers), gets[0], gets[1]))
	cutSt := b.sideStat(set, "registry bytes ÷ image bytes, cut", unitRatio, cutBytes)
	uncutSt := b.sideStat(set, "registry bytes ÷ image bytes, uncut", unitRatio, uncutBytes)
	what := fmt.Sprintf("cold pull of %d layers, each layer's connection cut at 30%% (first response) and 70%% (second)", len(im.layers))
	b.addRow("11", what+": registry blob bytes ÷ image bytes, cut (A) vs uncut (B)", kindRandom,
		cutSt, uncutSt, atMostValue(1.10, "≤ 1.10"))
	b.addRow("11'", what+": time, cut (A) vs uncut (B)", kindRandom,
		st[0], st[1], atMostTimes(1.3, "≤ 1.3", "A time ÷ B time"))
	return nil
}
