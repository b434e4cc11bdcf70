package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ocibuild/layercache/pkg/store"
)

// Figures of whole processes: the harness runs its own binary in a child
// role and reads the child's rusage, or the registry's counters.

// peakRSS: peak RSS of a process that warms an image of one big layer,
// cold and warm, against a process that only reads and hashes the same
// file. All are the same binary, so the runtime and the binary's mapped
// pages weigh the same on both sides.
func (b *bench) peakRSS(ctx context.Context) error {
	im, err := b.image(ctx, "rss")
	if err != nil {
		return err
	}
	dir := filepath.Join(b.work, "rss-store")
	blob := filepath.Join(b.work, "rss.blob")
	// The baseline reads a hard link of the stored blob: the same file,
	// which outlives the store directory the cold runs empty.
	if err := warmInto(ctx, dir, im.tag); err != nil {
		return err
	}
	l := im.layers[0]
	os.Remove(blob)
	if err := os.Link(filepath.Join(dir, "blobs", l.digest.Algorithm, l.digest.Hex), blob); err != nil {
		return err
	}
	defer os.Remove(blob)
	rss := func(role string, args ...string) func(context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			n, err := runChildRSS(ctx, b.rusage, role, args...)
			return float64(n), err
		}
	}
	hash := variant{name: "process: read + sha256 of the file", unit: unitBytes, run: rss("hash", blob), files: []string{blob}}
	cold := variant{name: "process: Warm, cold", unit: unitBytes, run: rss("warm", dir, im.tag.String()),
		prep: func(context.Context) error { return freshStore(dir) }}
	warm := variant{name: "process: Warm, warm", unit: unitBytes, run: rss("warm", dir, im.tag.String()), files: []string{dir}}
	st, err := b.sample(ctx, "peak RSS cold", cold, hash)
	if err != nil {
		return err
	}
	size := formatValue(float64(l.size), unitBytes)
	b.addRow("5", "peak RSS, process warming one "+size+" layer, cold (A) vs process reading + hashing the file (B)", kindRandom,
		st[0], st[1], atMostTimes(2, "≤ 2", "A ÷ B"))
	// The last cold run left the image cached.
	if err := warmInto(ctx, dir, im.tag); err != nil {
		return err
	}
	st, err = b.sample(ctx, "peak RSS warm", warm, hash)
	if err != nil {
		return err
	}
	b.addRow("5'", "peak RSS, process warming one "+size+" layer, warm (A) vs process reading + hashing the file (B)", kindRandom,
		st[0], st[1], atMostTimes(2, "≤ 2", "A ÷ B"))
	os.RemoveAll(dir)
	return nil
}

// concurrentProcs is how many processes warm one cold image at once.
const concurrentProcs = 4

// failures counts the child processes of a variant that failed.
type failures struct {
	runs, failed int
	first        string
}

func (f *failures) String() string {
	return fmt.Sprintf("%d of %d processes failed, first: %s", f.failed, f.runs, f.first)
}

// concurrentProcesses: 4 processes warm the same cold image into one
// cache at once; the figure is the blob bytes the registry served ÷ the
// image's blob bytes (layers and config). Against ggcr's filesystem cache
// (cache.NewFilesystemCache + cache.Image) read by 4 processes the same
// way. layercache runs twice: on an empty cache, and on a cache directory
// that does not exist yet (parallel CI jobs on a fresh runner), which the
// processes then create together.
//
// Failed processes are counted, not fatal, and the bytes served are
// measured all the same: ggcr's cache does not coordinate processes, and
// one may open a layer file that another has only just created.
func (b *bench) concurrentProcesses(ctx context.Context) error {
	im, err := b.image(ctx, kindRandom)
	if err != nil {
		return err
	}
	dir := filepath.Join(b.work, "concurrent-store")
	fsDir := filepath.Join(b.work, "concurrent-ggcr")
	served := func(role, dir string, f *failures) func(context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			if err := b.reg.reset(); err != nil {
				return 0, err
			}
			failed, err := runChildrenAtOnce(ctx, concurrentProcs, role, dir, im.tag.String())
			f.runs += concurrentProcs
			f.failed += failed
			if failed > 0 {
				b.logf("    %d of %d %s processes failed: %v", failed, concurrentProcs, role, err)
				if f.first == "" {
					// errors.Join puts one child's error per line.
					f.first, _, _ = strings.Cut(err.Error(), "\n")
				}
			}
			c, err := b.reg.counters()
			return float64(c.BlobBytes) / float64(im.blobBytes()), err
		}
	}
	var lcEmptyF, lcNewF, ggcrF failures
	lcEmpty := variant{name: fmt.Sprintf("%d × layercache Warm, empty cache", concurrentProcs), unit: unitRatio,
		prep: func(context.Context) error {
			if err := freshStore(dir); err != nil {
				return err
			}
			_, err := store.Open(dir)
			return err
		},
		run: served("warm", dir, &lcEmptyF)}
	lcNew := variant{name: fmt.Sprintf("%d × layercache Warm, no cache directory yet", concurrentProcs), unit: unitRatio,
		prep: func(context.Context) error { return freshStore(dir) }, run: served("warm", dir, &lcNewF)}
	ggcr := variant{name: fmt.Sprintf("%d × ggcr cache.Image + fs cache", concurrentProcs), unit: unitRatio,
		prep: func(context.Context) error { return freshStore(fsDir) }, run: served("ggcr-pull", fsDir, &ggcrF)}
	st, err := b.sample(ctx, "4 processes", lcEmpty, lcNew, ggcr)
	os.RemoveAll(dir)
	os.RemoveAll(fsDir)
	if err != nil {
		return err
	}
	// Configs are a few hundred bytes, fetched by each process without
	// the layer lock; anything past 1% is a layer fetched twice. A failed
	// process fails the row: it fetched nothing, which flatters the ratio.
	once := func(f *failures) check {
		return check{
			target: "1.0 (ggcr: 4.0), no process fails",
			ratio:  "A",
			calc:   func(a, _ float64) float64 { return a },
			pass:   func(r float64) bool { return r <= 1.01 && f.failed == 0 },
		}
	}
	what := fmt.Sprintf("%d processes warm one cold image at once: blob bytes served ÷ image bytes", concurrentProcs)
	b.addRow("6", what+", layercache on an empty cache (A) vs ggcr fs cache (B)", kindRandom, st[0], st[2], once(&lcEmptyF))
	b.addRow("6'", what+", layercache on a cache directory that does not exist yet (A) vs ggcr fs cache (B)", kindRandom, st[1], st[2], once(&lcNewF))
	for _, f := range []struct {
		row string
		f   *failures
	}{{"6, layercache", &lcEmptyF}, {"6', layercache", &lcNewF}, {"6, ggcr", &ggcrF}} {
		if f.f.failed > 0 {
			b.note(fmt.Sprintf("row %s: %s", f.row, f.f))
		}
	}
	return nil
}
