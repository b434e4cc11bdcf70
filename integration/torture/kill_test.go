package torture_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/pkg/store"
)

// putSize is the size of the blobs the kill scenarios store: large enough
// for a write loop of many reads.
const putSize = 512 << 10

// blobSteps are the step boundaries of a blob write (store.Writer).
var blobSteps = []string{
	"blob:temp-written", "blob:synced", "blob:before-rename", "blob:after-rename",
}

// indexSteps are those of an index.json update (layoutfs.UpdateIndex).
var indexSteps = []string{"index.json:temp-written", "index.json:before-rename", "index.json:after-rename"}

// statsSteps are those of a stats update (layoutfs.UpdateStats).
var statsSteps = []string{
	"layercache-stats.json:temp-written", "layercache-stats.json:before-rename", "layercache-stats.json:after-rename",
}

// killCase is one operation killed at one step.
type killCase struct {
	op      string
	step    string // LAYERCACHE_KILL_AT
	durable bool
	fresh   bool // the op creates the cache: it starts from no directory
}

// killWorld is a registry with two images, and a cache template that holds
// the first one (warmed, tagged), a few more blobs and a second ref; every
// kill starts from a copy of it.
type killWorld struct {
	*world
	template string
	seeded   cacheState // what the template holds
	extra    []digest.Digest
}

func newKillWorld(t *testing.T) *killWorld {
	t.Helper()
	w := &killWorld{world: newWorld(t, []int64{96 << 10, 64 << 10}, []int64{300 << 10, 200 << 10})}
	w.template = filepath.Join(t.TempDir(), "template")
	warm(t, w.template, w.images[0])
	s, err := store.Open(w.template)
	check(t, err)
	for i := range 3 {
		d, err := s.Put(t.Context(), strings.NewReader(fmt.Sprintf("seed blob %d %s", i, strings.Repeat("x", i*1000))))
		check(t, err)
		w.extra = append(w.extra, d)
	}
	check(t, s.Tag(t.Context(), "torture/seed:1", ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest, Digest: w.images[0].digest, Size: w.images[0].size,
	}))
	var bad []string
	w.seeded, bad = inspect(t, w.template)
	if len(bad) > 0 {
		t.Fatalf("the template is not sound: %v", bad)
	}
	return w
}

// args returns tortured's arguments for op on the cache at dir.
func (w *killWorld) args(dir, op string, durable bool, seed uint64) []string {
	a := []string{"op", "-dir", dir, "-op", op, "-seed", fmt.Sprint(seed), "-size", fmt.Sprint(putSize)}
	if durable {
		a = append(a, "-durable")
	}
	switch op {
	case torture.OpPull, torture.OpWarm:
		a = append(a, "-image", w.images[1].spec())
	case torture.OpTag:
		a = append(a, "-ref-name", "torture/tag:1", "-target", w.images[1].digest.String())
	case torture.OpPrune:
		a = append(a, "-max-size", "1")
	}
	return a
}

// lockable are the digests whose locks a killed op may have held.
func (w *killWorld) lockable() []digest.Digest {
	return append(append([]digest.Digest(nil), w.images[1].blobs...), w.images[0].blobs...)
}

// lost lists what a kill of op lost from before, the state it started
// from: blobs and refs that op does not remove must still be there.
func lost(op string, before, after cacheState) []string {
	var out []string
	switch op {
	case torture.OpClear:
		return nil // clear may remove anything
	case torture.OpPrune:
		// Prune may evict any blob; a ref goes only with its manifest.
		for n, d := range before.refs {
			if _, ok := after.refs[n]; !ok {
				if _, stored := after.blobs[d]; stored {
					out = append(out, fmt.Sprintf("ref %s dropped while its manifest %s is stored", n, d))
				}
			}
		}
		return out
	}
	for d := range before.blobs {
		if _, ok := after.blobs[d]; !ok {
			out = append(out, fmt.Sprintf("blob %s lost", d))
		}
	}
	for n, d := range before.refs {
		if op == torture.OpTag && n == "torture/tag:1" {
			continue // the op's own ref
		}
		if after.refs[n] != d {
			out = append(out, fmt.Sprintf("ref %s lost (was %s, now %q)", n, d, after.refs[n]))
		}
	}
	return out
}

// afterRerun checks what op must have done once it ran to completion.
func (w *killWorld) afterRerun(op string, r run, st cacheState) []string {
	var out []string
	switch op {
	case torture.OpPut, torture.OpPutVerified:
		if _, ok := st.blobs[digest.Digest(r.res.Digest)]; !ok {
			out = append(out, fmt.Sprintf("%s ran again but %s is not stored", op, r.res.Digest))
		}
	case torture.OpPull, torture.OpWarm:
		for _, d := range w.images[1].blobs {
			if _, ok := st.blobs[d]; !ok {
				out = append(out, fmt.Sprintf("%s ran again but %s is not stored", op, d))
			}
		}
		if op == torture.OpWarm && st.refs[w.images[1].ref.Name()] != w.images[1].digest {
			out = append(out, "warm ran again but its ref is not in index.json")
		}
	case torture.OpTag:
		if st.refs["torture/tag:1"] != w.images[1].digest {
			out = append(out, "tag ran again but the ref is not in index.json")
		}
	case torture.OpPrune, torture.OpClear:
		if len(st.blobs) != 0 || len(st.refs) != 0 {
			out = append(out, fmt.Sprintf("%s ran again but %d blobs and %d refs are left", op, len(st.blobs), len(st.refs)))
		}
	}
	return out
}

// killAndCheck runs one kill case on a fresh copy of the template: the op
// killed at its step, the checks of a fresh open, and the op again without
// a kill. It returns the run and the violations and losses found.
func (w *killWorld) killAndCheck(t *testing.T, dir string, c killCase, seed uint64) (r run, viol, lostData []string) {
	before := cacheState{blobs: map[digest.Digest]int64{}, refs: map[string]digest.Digest{}}
	if !c.fresh {
		before, _ = inspect(t, dir)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	r = runHelper(ctx, t, c.step, nil, w.args(dir, c.op, c.durable, seed)...)
	if r.err != nil {
		viol = append(viol, fmt.Sprintf("%s killed at %s: it failed instead: %v", c.op, c.step, r.err))
	}
	viol = append(viol, r.res.Violations...)
	after, bad := inspect(t, dir, w.lockable()...)
	viol = append(viol, bad...)
	lostData = lost(c.op, before, after)

	// The next operation succeeds: the same one, not killed.
	again := runHelper(ctx, t, "", nil, w.args(dir, c.op, c.durable, seed)...)
	switch {
	case again.killed:
		viol = append(viol, fmt.Sprintf("%s after a kill at %s: killed without a kill point", c.op, c.step))
	case again.err != nil:
		viol = append(viol, fmt.Sprintf("%s after a kill at %s: %v", c.op, c.step, again.err))
	default:
		viol = append(viol, again.res.Violations...)
		st, bad := inspect(t, dir, w.lockable()...)
		viol = append(viol, bad...)
		viol = append(viol, w.afterRerun(c.op, again, st)...)
	}
	return r, viol, lostData
}

// TestKillAtEveryStep kills each operation (Put, PutVerified, a
// pull-through, Warm, Prune, Clear, an index.json ref update) with SIGKILL
// at each step boundary it passes, then checks the cache as a fresh process
// finds it, and that the operation then succeeds.
func TestKillAtEveryStep(t *testing.T) {
	w := newKillWorld(t)
	var cases []killCase
	rng := rand.New(rand.NewPCG(6, 1))
	for _, op := range []string{torture.OpPut, torture.OpPutVerified} {
		for _, step := range append(blobSteps, "blob:before-dirsync") {
			cases = append(cases, killCase{op, step, true, false})
		}
		// Mid-write, at a random byte offset.
		cases = append(cases, killCase{op, fmt.Sprintf("blob:bytes+%d", rng.IntN(putSize)), true, false})
	}
	// The pull-through: the manifest is the first blob it locks and
	// writes, the first layer the third.
	for _, step := range append(append([]string{"blob:locked", "blob:locked@3", "blob:bytes+1000"}, blobSteps...), statsSteps...) {
		cases = append(cases, killCase{torture.OpPull, step, false, false})
	}
	for _, step := range append([]string{"blob:locked@3", "blob:before-dirsync@3"}, indexSteps...) {
		cases = append(cases, killCase{torture.OpWarm, step, true, false})
	}
	for _, step := range indexSteps {
		cases = append(cases, killCase{torture.OpTag, step, false, false})
	}
	for _, step := range append([]string{"prune:evicted", "prune:evicted@3", "prune:before-index"}, indexSteps...) {
		cases = append(cases, killCase{torture.OpPrune, step, false, false})
	}
	for _, step := range append([]string{"clear:removed", "clear:removed@3"}, indexSteps...) {
		cases = append(cases, killCase{torture.OpClear, step, false, false})
	}
	// The first use of a directory creates the cache: index.json first,
	// oci-layout last.
	for _, step := range []string{"index.json:before-link", "oci-layout:temp-written", "oci-layout:before-rename", "oci-layout:after-rename"} {
		cases = append(cases, killCase{torture.OpPut, step, true, true})
	}

	var kills, violations, lostN int
	steps := map[string]bool{}
	var details []string
	for i, c := range cases {
		dir := filepath.Join(t.TempDir(), "cache")
		if !c.fresh {
			copyDir(t, w.template, dir)
		}
		r, viol, lostData := w.killAndCheck(t, dir, c, uint64(i+1))
		if !r.killed {
			t.Errorf("%s with LAYERCACHE_KILL_AT=%s: the process was not killed (the step was never reached)\n%s", c.op, c.step, tail(r.stderr))
		} else {
			kills++
			steps[stepName(r.killAt)] = true
		}
		for _, v := range viol {
			t.Errorf("%s killed at %s: %s", c.op, c.step, v)
		}
		for _, l := range lostData {
			t.Errorf("%s killed at %s: data lost: %s", c.op, c.step, l)
		}
		violations += len(viol)
		lostN += len(lostData)
		if len(viol)+len(lostData) > 0 {
			details = append(details, fmt.Sprintf("%s at %s: %s", c.op, c.step, strings.Join(append(viol, lostData...), "; ")))
		}
	}
	names := make([]string, 0, len(steps))
	for s := range steps {
		names = append(names, s)
	}
	sort.Strings(names)
	report.add(t, row{
		scenario: "1a. kill at every step",
		ops:      kills, faults: fmt.Sprintf("%d SIGKILLs", kills),
		violations: violations, lost: lostN,
		details: append([]string{fmt.Sprintf("%d operation/step cases, %d steps covered: %s", len(cases), len(names), strings.Join(names, " "))}, details...),
	})
}

// stepName drops the count or offset of a kill point.
func stepName(s string) string {
	if i := strings.IndexAny(s, "@+"); i >= 0 {
		return s[:i]
	}
	return s
}

// TestKillAtRandomOffsets runs random operations on one cache, each with a
// random chance of being killed at any fault point, including any chunk of
// a write loop, and checks the cache after each.
func TestKillAtRandomOffsets(t *testing.T) {
	w := newKillWorld(t)
	dir := filepath.Join(t.TempDir(), "cache")
	copyDir(t, w.template, dir)
	ops := []struct {
		op      string
		weight  int
		durable bool
	}{
		{torture.OpPut, 4, true}, {torture.OpPutVerified, 3, false}, {torture.OpPull, 3, false},
		{torture.OpWarm, 2, true}, {torture.OpTag, 2, false}, {torture.OpPrune, 1, false}, {torture.OpClear, 1, false},
	}
	total := 0
	for _, o := range ops {
		total += o.weight
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	deadline := time.Now().Add(budget(0.2))
	var runs, kills, violations, lostN int
	steps := map[string]int{}
	var details []string
	for i := 0; i < 12 || time.Now().Before(deadline); i++ {
		k := rng.IntN(total)
		var c killCase
		for _, o := range ops {
			if k -= o.weight; k < 0 {
				c = killCase{op: o.op, durable: o.durable}
				break
			}
		}
		seed := rng.Uint64()
		c.step = fmt.Sprintf("random:%d:0.08", seed)
		// A pull or warm writes only what is missing: make it all missing.
		if c.op == torture.OpPull || c.op == torture.OpWarm {
			s, err := store.Open(dir)
			check(t, err)
			for _, d := range w.images[1].blobs {
				_ = s.Delete(t.Context(), d)
			}
		}
		r, viol, lostData := w.killAndCheck(t, dir, c, seed%1000)
		runs++
		if r.killed {
			kills++
			steps[stepName(r.killAt)]++
		}
		for _, v := range viol {
			t.Errorf("%s with %s: %s", c.op, c.step, v)
		}
		for _, l := range lostData {
			t.Errorf("%s with %s: data lost: %s", c.op, c.step, l)
		}
		violations += len(viol)
		lostN += len(lostData)
		if len(viol)+len(lostData) > 0 {
			details = append(details, fmt.Sprintf("%s with %s: %s", c.op, c.step, strings.Join(append(viol, lostData...), "; ")))
		}
		// Keep the cache from filling the disk over a long run.
		if i%20 == 19 {
			s, err := store.Open(dir)
			check(t, err)
			_, _ = s.Prune(t.Context(), store.Policy{MaxSize: 8 << 20})
		}
	}
	names := make([]string, 0, len(steps))
	for s, n := range steps {
		names = append(names, fmt.Sprintf("%s=%d", s, n))
	}
	sort.Strings(names)
	report.add(t, row{
		scenario: "1b. kill at random points and byte offsets",
		ops:      runs, faults: fmt.Sprintf("%d SIGKILLs", kills),
		violations: violations, lost: lostN,
		details: append([]string{fmt.Sprintf("%d runs, %d killed at: %s", runs, kills, strings.Join(names, " "))}, details...),
	})
}
