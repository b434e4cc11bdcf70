package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// maxViolations bounds the violations a worker describes; it counts the
// rest.
const maxViolations = 20

// opTimeout bounds one operation: a lock never released, or a read that
// hangs, shows up as a timeout.
const opTimeout = 2 * time.Minute

// worker runs a random mix of operations on one cache directory, which
// other workers in other processes use at the same time.
type worker struct {
	s       *store.Store
	id      int
	rng     *rand.Rand
	images  []imageSpec
	coord   string
	maxSize int64
	faulty  bool // the registry misbehaves: pulls and warms may fail
	log     *slog.Logger
	start   time.Time

	known []digest.Digest // blobs that pulls showed the images to have
	puts  []digest.Digest // the worker's own puts, newest last
	refs  map[string]*torture.RefState
	res   torture.Result
	extra int // violations beyond maxViolations
}

func runWorker(args []string) (torture.Result, error) {
	fs := flagSet("worker")
	var (
		dir      = fs.String("dir", "", "cache directory")
		coord    = fs.String("coord", "", "directory of the coordination files")
		id       = fs.Int("id", 0, "worker number")
		duration = fs.Duration("duration", 10*time.Second, "how long to run")
		seed     = fs.Uint64("seed", 1, "seed of the mix")
		maxSize  = fs.Int64("max-size", 1<<20, "prune: size bound")
		faulty   = fs.Bool("faulty", false, "the registry injects faults")
		images   specList
	)
	fs.Var(&images, "image", "an image to warm and pull (REF|DIGEST|SIZE); repeatable")
	if err := fs.Parse(args); err != nil {
		return torture.Result{}, err
	}
	if len(images) == 0 {
		return torture.Result{}, errors.New("no -image")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := store.Open(*dir, store.WithLogger(log))
	if err != nil {
		return torture.Result{}, err
	}
	w := &worker{
		s: s, id: *id, rng: rand.New(rand.NewPCG(*seed, uint64(*id))), images: images,
		coord: *coord, maxSize: *maxSize, faulty: *faulty, log: log,
		refs:  map[string]*torture.RefState{},
		res:   torture.Result{Ops: map[string]int{}, Errors: map[string]int{}},
		start: time.Now(),
	}
	for _, img := range images {
		w.known = append(w.known, img.digest)
	}
	ops := []struct {
		name   string
		weight int
		run    func(ctx context.Context) error
	}{
		{torture.OpWarm, 6, w.warm},
		{torture.OpPull, 8, w.pull},
		{torture.OpGet, 12, w.get},
		{torture.OpPut, 6, w.put},
		{torture.OpPutVerified, 4, w.putVerified},
		{torture.OpDelete, 3, w.delete},
		{torture.OpPrune, 2, w.prune},
		{torture.OpClear, 1, w.clear},
		{torture.OpTag, 10, w.tag},
		{torture.OpUntag, 2, w.untag},
	}
	total := 0
	for _, o := range ops {
		total += o.weight
	}
	deadline := time.Now().Add(*duration)
	for time.Now().Before(deadline) {
		k := w.rng.IntN(total)
		for _, o := range ops {
			if k -= o.weight; k >= 0 {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			err := o.run(ctx)
			cancel()
			w.res.Ops[o.name]++
			if err != nil {
				w.fail(o.name, err)
			}
			break
		}
	}
	for _, r := range w.refs {
		w.res.Refs = append(w.res.Refs, *r)
	}
	if w.extra > 0 {
		w.res.Violations = append(w.res.Violations, fmt.Sprintf("... and %d more", w.extra))
	}
	return w.res, nil
}

// fail counts an operation's error, and makes it a violation unless it is
// documented and expected: a blob that others deleted meanwhile, or, when
// the registry misbehaves, a pull or warm that fails because of it.
func (w *worker) fail(op string, err error) {
	class := torture.Classify(err)
	w.res.Errors[op+"/"+class]++
	switch {
	case class == torture.ClassNotFound && (op == torture.OpGet || op == torture.OpDelete):
		return
	case w.faulty && (op == torture.OpPull || op == torture.OpWarm) && torture.RegistryFault(class):
		return
	}
	w.violation("%s: %s error: %v", op, class, err)
}

func (w *worker) violation(format string, args ...any) {
	if len(w.res.Violations) >= maxViolations {
		w.extra++
		return
	}
	w.res.Violations = append(w.res.Violations, fmt.Sprintf("worker %d, %v in: ", w.id, time.Since(w.start).Round(time.Millisecond))+fmt.Sprintf(format, args...))
}

func (w *worker) image() imageSpec { return w.images[w.rng.IntN(len(w.images))] }

func (w *worker) warm(ctx context.Context) error {
	img := w.image()
	rep, err := remotecache.Warm(ctx, img.ref, w.s, cacheOptions(ctx, w.log)...)
	if err != nil {
		return err
	}
	if rep.Digest != img.digest.String() {
		w.violation("warm %s resolved %s, want %s", img.ref, rep.Digest, img.digest)
	}
	return nil
}

func (w *worker) pull(ctx context.Context) error {
	p, bad, err := pullImage(ctx, w.s, w.image(), cacheOptions(ctx, w.log))
	for _, b := range bad {
		w.violation("%s", b)
	}
	if p.config != "" && len(w.known) < 64 {
		for _, d := range append([]digest.Digest{p.config}, p.layers...) {
			if !contains(w.known, d) {
				w.known = append(w.known, d)
			}
		}
	}
	return err
}

func contains(ds []digest.Digest, d digest.Digest) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

// get reads a blob the worker knows of, by Get or by the streaming Open,
// and checks the bytes itself.
func (w *worker) get(ctx context.Context) error {
	pool := append(append([]digest.Digest(nil), w.known...), w.puts...)
	d := pool[w.rng.IntN(len(pool))]
	var got digest.Digest
	if w.rng.IntN(2) == 0 {
		b, err := w.s.Get(ctx, d)
		if err != nil {
			return err
		}
		got = digest.FromBytes(b)
	} else {
		rc, err := w.s.Open(ctx, d)
		if err != nil {
			return err
		}
		got, _, err = hashAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	if got != d {
		w.violation("get %s returned bytes hashing to %s", d, got)
	}
	return nil
}

func (w *worker) put(ctx context.Context) error { return w.store(ctx, false) }

func (w *worker) putVerified(ctx context.Context) error { return w.store(ctx, true) }

// store puts random bytes and reads them back.
func (w *worker) store(ctx context.Context, verified bool) error {
	data := randomBytes(w.rng, 1+w.rng.IntN(192<<10))
	want := digest.FromBytes(data)
	r := &choppyReader{data: data, rng: w.rng}
	if verified {
		if err := w.s.PutVerified(ctx, want, int64(len(data)), r); err != nil {
			return err
		}
	} else {
		got, err := w.s.Put(ctx, r)
		if err != nil {
			return err
		}
		if got != want {
			w.violation("put returned %s, want %s", got, want)
		}
	}
	w.puts = append(w.puts, want)
	if len(w.puts) > 32 {
		w.puts = w.puts[1:]
	}
	b, err := w.s.Get(ctx, want)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Deleted, pruned or cleared by another worker meanwhile.
	case err != nil:
		return fmt.Errorf("reading back %s: %w", want, err)
	case !bytes.Equal(b, data):
		w.violation("read back %s: got %d other bytes", want, len(b))
	}
	return nil
}

// delete removes a random stored blob.
func (w *worker) delete(ctx context.Context) error {
	var all []digest.Digest
	if err := w.s.Walk(ctx, func(i store.Info) error { all = append(all, i.Digest); return nil }); err != nil {
		return err
	}
	if len(all) == 0 {
		return nil
	}
	return w.s.Delete(ctx, all[w.rng.IntN(len(all))])
}

// destructive runs fn, a prune or a clear, between the marks that tell
// the ref checks of every worker that refs may go.
func (w *worker) destructive(fn func() error) error {
	if err := torture.Mark(w.coord, torture.StartsFile); err != nil {
		return err
	}
	err := fn()
	if merr := torture.Mark(w.coord, torture.EndsFile); err == nil {
		err = merr
	}
	return err
}

func (w *worker) prune(ctx context.Context) error {
	return w.destructive(func() error {
		_, err := w.s.Prune(ctx, store.Policy{MaxSize: w.maxSize})
		return err
	})
}

func (w *worker) clear(ctx context.Context) error {
	return w.destructive(func() error { return w.s.Clear(ctx) })
}

func (w *worker) refName() string {
	return fmt.Sprintf("torture.invalid/w%d:r%d", w.id, w.rng.IntN(6))
}

// quietWindow returns a func that reports, once the ref write and its
// read-back are done, whether no prune or clear ran meanwhile, and the
// number started so far.
func (w *worker) quietWindow() func() (bool, int64) {
	s0 := torture.Generation(w.coord, torture.StartsFile)
	e0 := torture.Generation(w.coord, torture.EndsFile)
	return func() (bool, int64) {
		s1 := torture.Generation(w.coord, torture.StartsFile)
		return s0 == e0 && s1 == s0, s1
	}
}

// tag points a ref of this worker's own at a blob, and checks at once that
// index.json holds it: nobody else writes this name, so if no prune or
// clear ran meanwhile, a missing or different entry is a lost update.
func (w *worker) tag(ctx context.Context) error {
	name := w.refName()
	var d digest.Digest
	if len(w.puts) > 0 && w.rng.IntN(3) == 0 {
		d = w.puts[w.rng.IntN(len(w.puts))]
	} else {
		d = w.image().digest
	}
	quiet := w.quietWindow()
	err := w.s.Tag(ctx, name, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 1})
	if err != nil {
		w.refs[name] = &torture.RefState{Name: name, Unsure: true}
		return err
	}
	got, rerr := w.s.Resolve(ctx, name)
	ok, gen := quiet()
	w.refs[name] = &torture.RefState{Name: name, Digest: d.String(), Quiet: ok, Gen: gen}
	if !ok {
		return nil
	}
	w.res.RefChecks++
	if rerr != nil || got.Digest != d {
		w.res.LostUpdates++
		w.violation("lost update: %s tagged to %s, then index.json has %s (%v) with no prune or clear in between", name, d, got.Digest, rerr)
	}
	return nil
}

// untag removes a ref of this worker's own and checks it is gone.
func (w *worker) untag(ctx context.Context) error {
	name := w.refName()
	if err := w.s.Untag(ctx, name); err != nil {
		w.refs[name] = &torture.RefState{Name: name, Unsure: true}
		return err
	}
	w.refs[name] = &torture.RefState{Name: name}
	w.res.RefChecks++
	if got, err := w.s.Resolve(ctx, name); err == nil {
		w.res.LostUpdates++
		w.violation("lost update: %s untagged, then index.json has it at %s", name, got.Digest)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}
