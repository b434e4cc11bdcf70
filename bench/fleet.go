package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Figures of a fleet of runners behind a mirror (issue 15): rows 12 and
// 13, with the mirrors of mirror.go.

// runCLIsAtOnce runs the built CLI once per argument list, all at once:
// each process starts under a shell that waits for a line on its stdin,
// and the lines go out once all have started. It returns how many failed,
// and why.
func (b *bench) runCLIsAtOnce(ctx context.Context, argLists [][]string) (int, error) {
	type child struct {
		cmd    *exec.Cmd
		start  io.WriteCloser
		stderr *limitedBuffer
	}
	var children []child
	defer func() {
		for _, c := range children {
			c.start.Close()
			c.cmd.Wait()
		}
	}()
	for _, args := range argLists {
		cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", `read _ && exec "$0" "$@"`, b.cli}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return len(argLists), err
		}
		stderr := &limitedBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			return len(argLists), err
		}
		children = append(children, child{cmd, stdin, stderr})
	}
	for _, c := range children {
		if _, err := c.start.Write([]byte{'\n'}); err != nil {
			return len(argLists), err
		}
	}
	var errs []error
	for _, c := range children {
		if err := c.cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("layercache: %w: %s", err, strings.TrimSpace(c.stderr.String())))
		}
		c.start.Close()
	}
	children = nil
	return len(errs), errors.Join(errs...)
}

// fleetRunners is how many runners warm one image at once in row 12.
const fleetRunners = 8

// fleet: 8 runners (separate cache directories, separate `layercache
// warm` processes, at once) warm one cold image through a cold mirror;
// the upstream's blob bytes ÷ the image's, against the same fleet with no
// mirror. The image is the 8-layer one of row 8: a ratio of bytes needs
// no big layers.
func (b *bench) fleet(ctx context.Context) error {
	im, err := b.image(ctx, "latency")
	if err != nil {
		return err
	}
	base := filepath.Join(b.work, "fleet")
	defer os.RemoveAll(base)
	var m *mirrorProc
	defer func() {
		if m != nil {
			m.stop()
		}
	}()
	dirs := make([]string, fleetRunners)
	for i := range dirs {
		dirs[i] = filepath.Join(base, fmt.Sprintf("runner%d", i))
	}
	// withMirror: 0 none, 1 the mirror of mirrorKind, 2 the harness's own.
	fresh := func(withMirror int) func(context.Context) error {
		return func(ctx context.Context) error {
			for _, d := range dirs {
				if err := os.RemoveAll(d); err != nil {
					return err
				}
			}
			if m != nil {
				m.stop()
				m = nil
			}
			if withMirror > 0 {
				var err error
				if m, err = b.startMirrorOf(ctx, b.reg.host, filepath.Join(base, "mirror"), withMirror == 2 || b.distribution == ""); err != nil {
					return err
				}
			}
			syscall.Sync()
			return b.reg.reset()
		}
	}
	// seeded: one runner warms first, then the others at once, as a
	// fleet whose jobs do not all start in the same second meets a cold
	// mirror.
	served := func(withMirror int, seeded bool, f *failures) func(context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			var lists [][]string
			for _, d := range dirs {
				args := []string{"--cache-dir", d, "warm"}
				if withMirror > 0 {
					args = append(args, "--mirror", b.reg.host+"=http://"+m.addr)
				}
				lists = append(lists, append(args, im.tag.String()))
			}
			waves := [][][]string{lists}
			if seeded {
				waves = [][][]string{lists[:1], lists[1:]}
			}
			for _, wave := range waves {
				failed, err := b.runCLIsAtOnce(ctx, wave)
				f.runs += len(wave)
				f.failed += failed
				if failed > 0 && f.first == "" {
					f.first, _, _ = strings.Cut(err.Error(), "\n")
				}
			}
			c, err := b.reg.counters()
			return float64(c.BlobBytes) / float64(im.blobBytes()), err
		}
	}
	var withF, ownF, withoutF, seedF failures
	with := variant{name: fmt.Sprintf("%d runners through the mirror", fleetRunners), unit: unitRatio,
		prep: fresh(1), run: served(1, false, &withF)}
	without := variant{name: fmt.Sprintf("%d runners, no mirror", fleetRunners), unit: unitRatio,
		prep: fresh(0), run: served(0, false, &withoutF)}
	seed := variant{name: fmt.Sprintf("1 runner, then %d at once, through the mirror", fleetRunners-1), unit: unitRatio,
		prep: fresh(1), run: served(1, true, &seedF)}
	vs := []variant{with, without, seed}
	if b.distribution != "" {
		vs = append(vs, variant{name: fmt.Sprintf("%d runners through the harness's mirror", fleetRunners), unit: unitRatio,
			prep: fresh(2), run: served(2, false, &ownF)})
	}
	st, err := b.sample(ctx, "fleet", vs...)
	if err != nil {
		return err
	}
	once := func(f *failures) check {
		return check{
			target: fmt.Sprintf("1.0 (no mirror: %d.0), no runner fails", fleetRunners),
			ratio:  "A",
			calc:   func(a, _ float64) float64 { return a },
			pass:   func(r float64) bool { return r <= 1.01 && f.failed == 0 },
		}
	}
	b.addRow("12", fmt.Sprintf("%d cold runners (own cache directories, `layercache warm` processes at once) warm one %d-layer image: upstream blob bytes ÷ image bytes, through a cold mirror, %s (A) vs no mirror (B)",
		fleetRunners, len(im.layers), b.mirrorKind()), kindRandom, st[0], st[1], once(&withF))
	// A mirror that has the image already serves every runner from its
	// storage; one runner's warm ahead of the others is what it takes.
	b.addRow("12s", fmt.Sprintf("the same, one runner first and then %d at once, through %s (A) vs no mirror (B)", fleetRunners-1, b.mirrorKind()),
		kindRandom, st[2], st[1], once(&seedF))
	if len(st) > 3 {
		// distribution sends a request for a blob it is still fetching to
		// the upstream too (distribution#1334): the runners' own share is
		// seen through a mirror that makes them wait for its one fetch.
		b.addRow("12'", "the same through the harness's own pull-through mirror, whose concurrent misses of a blob wait for its one fetch (A) vs no mirror (B)", kindRandom, st[3], st[1], infoTimes("A ÷ B"))
	}
	for _, f := range []struct {
		what string
		f    *failures
	}{{"through the mirror", &withF}, {"no mirror", &withoutF}, {"one runner first", &seedF}, {"through the harness's mirror", &ownF}} {
		if f.f.failed > 0 {
			b.note(fmt.Sprintf("row 12, %s: %s", f.what, f.f))
		}
	}
	return nil
}

// mirrorLatency: a cold runner (`layercache warm`, a new cache directory)
// whose image the mirror holds, against the same runner pulling from the
// upstream through the +20 ms proxy. The mirror's upstream is that proxy
// too; the runner asks the upstream for the tag either way (--mirror
// serves blobs and manifests by digest).
func (b *bench) mirrorLatency(ctx context.Context) error {
	im, err := b.image(ctx, "latency")
	if err != nil {
		return err
	}
	ref, err := im.byTag(b.reg.slowHost)
	if err != nil {
		return err
	}
	var stops []func()
	base := filepath.Join(b.work, "mirror-latency")
	defer os.RemoveAll(base)
	dir := filepath.Join(base, "runner")
	byDigest, err := im.byDigest(b.reg.slowHost)
	if err != nil {
		return err
	}
	// warmMirror starts a mirror of the +20 ms port, warms it (not
	// measured) and waits until it holds every blob; it returns the
	// runner's --mirror flag.
	digests := []string{im.config.String()}
	for _, l := range im.layers {
		digests = append(digests, l.digest.String())
	}
	sort.Strings(digests)
	warmMirror := func(own bool, sub string) ([]string, error) {
		m, err := b.startMirrorOf(ctx, b.reg.slowHost, filepath.Join(base, sub), own)
		if err != nil {
			return nil, err
		}
		stops = append(stops, m.stop)
		flag := []string{"--mirror", b.reg.slowHost + "=http://" + m.addr}
		if err := freshStore(dir); err != nil {
			return nil, err
		}
		if err := b.runCLI(ctx, append(append([]string{"--cache-dir", dir, "warm"}, flag...), ref.String())...); err != nil {
			return nil, err
		}
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			missing := 0
			for _, d := range digests {
				if !m.has("bench/"+im.name, d) {
					missing++
				}
			}
			if missing == 0 {
				return flag, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("the mirror holds %d of %d blobs a minute after a warm through it", len(digests)-missing, len(digests))
			}
		}
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	mirrorFlag, err := warmMirror(b.distribution == "", "mirror")
	if err != nil {
		return err
	}
	prep := func(context.Context) error { return freshStore(dir) }
	n := im.layerBytes()
	warm := func(r fmt.Stringer, flag []string) func(context.Context) error {
		args := append(append([]string{"--cache-dir", dir, "warm"}, flag...), r.String())
		return func(ctx context.Context) error { return b.runCLI(ctx, args...) }
	}
	vs := []variant{
		{name: "by digest, image warm in the mirror", unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(byDigest, mirrorFlag))},
		{name: fmt.Sprintf("by digest, upstream +%s", latency), unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(byDigest, nil))},
		{name: "by tag, image warm in the mirror", unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(ref, mirrorFlag))},
		{name: fmt.Sprintf("by tag, upstream +%s", latency), unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(ref, nil))},
	}
	if b.distribution != "" {
		// The same runner against the harness's own mirror: what the
		// runner's side of the row gives with a mirror that serves from
		// memory.
		ownFlag, err := warmMirror(true, "own-mirror")
		if err != nil {
			return err
		}
		vs = append(vs, variant{name: "by digest, image warm in the harness's mirror", unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(byDigest, ownFlag))})
	}
	st, err := b.sample(ctx, "mirror latency", vs...)
	if err != nil {
		return err
	}
	// What the upstream still sees of a warm through the mirror (the
	// runner's requests and the mirror's): one more run, not measured.
	for _, v := range []struct {
		what string
		r    fmt.Stringer
	}{{"by digest", byDigest}, {"by tag", ref}} {
		if err := prep(ctx); err != nil {
			return err
		}
		if err := b.reg.reset(); err != nil {
			return err
		}
		if err := warm(v.r, mirrorFlag)(ctx); err != nil {
			return err
		}
		c, err := b.reg.counters()
		if err != nil {
			return err
		}
		b.note(fmt.Sprintf("row 13, %s: a cold runner's warm through the warm mirror made %d requests to the upstream (%d blob GETs)", v.what, c.Requests, c.BlobGets))
	}
	what := fmt.Sprintf("`layercache warm` of a %d-layer image by a cold runner: image warm in a loopback mirror, %s (A) vs from the upstream, +%s per request (B)", len(im.layers), b.mirrorKind(), latency)
	b.addRow("13", what+"; by digest (the mirror answers every request)", kindRandom, st[0], st[1], speedAtLeast(1.5, "≥ 1.5"))
	b.addRow("13'", what+"; by tag (--mirror serves digests: the tag is asked of the upstream)", kindRandom, st[2], st[3], infoSpeed())
	if len(st) > 4 {
		b.addRow("13''", fmt.Sprintf("the same by digest, image warm in the harness's own mirror (blobs in memory) (A) vs from the upstream, +%s per request (B)", latency), kindRandom, st[4], st[1], infoSpeed())
	}
	return nil
}
