package remotecache_test

import (
	"context"
	"errors"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

func TestWarm_Report(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 30, 3, 4096))
	s, _ := openStore(t)

	// manifest + config + layers
	blobs := 2 + len(fx.layers)
	var bytes int64 = int64(len(must(fx.img.RawManifest()))) + int64(len(must(fx.img.RawConfigFile())))
	for _, h := range fx.layers {
		bytes += int64(len(fx.comp[h]))
	}

	tests := []struct {
		pass          string
		cached, fetch remotecache.Tally
	}{
		// An empty cache fetches everything.
		{"cold", remotecache.Tally{}, remotecache.Tally{Blobs: blobs, Bytes: bytes}},
		// A warm one fetches nothing, and says it verified everything.
		{"warm", remotecache.Tally{Blobs: blobs, Bytes: bytes}, remotecache.Tally{}},
	}
	for _, tc := range tests {
		reg.reset()
		rep, err := remotecache.Warm(t.Context(), fx.ref, s, fast)
		if err != nil {
			t.Fatalf("%s: Warm: %v", tc.pass, err)
		}
		if rep.Cached != tc.cached || rep.Fetched != tc.fetch {
			t.Errorf("%s: Report cached %+v fetched %+v, want cached %+v fetched %+v", tc.pass, rep.Cached, rep.Fetched, tc.cached, tc.fetch)
		}
		if rep.Ref != fx.ref.Name() || rep.Digest != fx.digest.String() {
			t.Errorf("%s: Report ref %q digest %q, want %q %q", tc.pass, rep.Ref, rep.Digest, fx.ref.Name(), fx.digest)
		}
		if rep.Offline {
			t.Errorf("%s: Report.Offline with the registry up", tc.pass)
		}
		gets, n := reg.totalBlobGets()
		if tc.pass == "warm" && (gets != 0 || n != 0) {
			t.Errorf("warm: %d blob GETs (%d bytes), want 0", gets, n)
		}
		if tc.pass == "cold" && n != bytes-int64(len(must(fx.img.RawManifest()))) {
			t.Errorf("cold: registry sent %d blob bytes, want %d", n, bytes-int64(len(must(fx.img.RawManifest()))))
		}
	}

	// index.json records the ref with the manifest digest.
	desc, err := s.Resolve(t.Context(), fx.ref.Name())
	if err != nil {
		t.Fatalf("Resolve(%q): %v", fx.ref.Name(), err)
	}
	if desc.Digest != digest.Digest(fx.digest.String()) {
		t.Errorf("index.json: %s → %s, want %s", fx.ref.Name(), desc.Digest, fx.digest)
	}
	if desc.MediaType != string(must(fx.img.MediaType())) {
		t.Errorf("index.json: media type %s, want %s", desc.MediaType, must(fx.img.MediaType()))
	}
	assertClean(t, s)
}

func TestWarm_RefetchesCorruptedLayer(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 31, 3, 4096))
	for _, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			s, dir := openStore(t)
			if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err != nil {
				t.Fatal(err)
			}
			target := fx.layers[2]
			c.apply(t, blobFile(dir, target))

			reg.reset()
			logger, logs := newLogger()
			rep, err := remotecache.Warm(t.Context(), fx.ref, s, fast, remotecache.WithLogger(logger))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Fetched.Blobs != 1 || rep.Fetched.Bytes != int64(len(fx.comp[target])) {
				t.Errorf("Report fetched %+v, want the one layer (%d bytes)", rep.Fetched, len(fx.comp[target]))
			}
			if want := 1 + len(fx.layers); rep.Cached.Blobs != want {
				t.Errorf("Report cached %d blobs, want %d", rep.Cached.Blobs, want)
			}
			if gets, _ := reg.totalBlobGets(); gets != 1 || reg.gets(target) != 1 {
				t.Errorf("%d blob GETs (%d of the damaged layer), want exactly 1 of it", gets, reg.gets(target))
			}
			if len(logs.warnings()) == 0 {
				t.Error("no warning about the corrupted layer")
			}
			assertStored(t, s, target)
			assertClean(t, s)
		})
	}
}

func TestWarm_Platforms(t *testing.T) {
	reg := newTestRegistry(t)
	fx, byPlatform := reg.pushIndex(t, "test/multi:v1", 40)

	tests := []struct {
		name string
		opts []remotecache.Option
		want []string // platforms warmed
	}{
		// One platform by default: linux/amd64.
		{"default", nil, []string{"linux/amd64"}},
		// WithPlatform picks another.
		{"WithPlatform", []remotecache.Option{remotecache.WithPlatform(platforms[2])}, []string{"linux/s390x"}},
		// WithAllPlatforms warms every child.
		{"WithAllPlatforms", []remotecache.Option{remotecache.WithAllPlatforms()}, []string{"linux/amd64", "linux/arm64/v8", "linux/s390x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openStore(t)
			rep, err := remotecache.Warm(t.Context(), fx.ref, s, append(tc.opts, fast)...)
			if err != nil {
				t.Fatal(err)
			}
			if got := sortedStrings(rep.Platforms); !equalStrings(got, tc.want) {
				t.Errorf("Report.Platforms %v, want %v", got, tc.want)
			}
			if rep.Digest != fx.digest.String() {
				t.Errorf("Report.Digest %s, want the index %s", rep.Digest, fx.digest)
			}
			warmed := map[string]bool{}
			for _, p := range tc.want {
				warmed[p] = true
			}
			// index, and per platform: manifest, config, 2 layers.
			if want := 1 + 4*len(tc.want); rep.Fetched.Blobs != want {
				t.Errorf("Report fetched %d blobs, want %d", rep.Fetched.Blobs, want)
			}
			for p, img := range byPlatform {
				for _, h := range append([]v1.Hash{must(img.Digest()), must(img.ConfigName())}, layerDigests(img)...) {
					if warmed[p] {
						assertStored(t, s, h)
					} else {
						assertNotStored(t, s, h)
					}
				}
			}
			desc, err := s.Resolve(t.Context(), fx.ref.Name())
			if err != nil {
				t.Fatal(err)
			}
			if desc.Digest != digest.Digest(fx.digest.String()) {
				t.Errorf("index.json: %s, want the index digest %s", desc.Digest, fx.digest)
			}
			assertClean(t, s)

			// Offline, every warmed platform is there.
			for p := range warmed {
				var plat v1.Platform
				for _, q := range platforms {
					if q.String() == p {
						plat = q
					}
				}
				img, err := remotecache.Image(fx.ref, s, remotecache.WithOffline(), remotecache.WithPlatform(plat))
				if err != nil {
					t.Fatalf("offline Image for %s: %v", p, err)
				}
				fx.assertImage(t, img, byPlatform[p])
			}
		})
	}
}

func layerDigests(img v1.Image) []v1.Hash {
	var out []v1.Hash
	for _, l := range must(img.Layers()) {
		out = append(out, must(l.Digest()))
	}
	return out
}

func TestWarm_Progress(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 32, 4, 64<<10))
	s, _ := openStore(t)

	for _, pass := range []string{"cold", "warm"} {
		var mu sync.Mutex
		events := map[digest.Digest][]remotecache.Progress{}
		rep, err := remotecache.Warm(t.Context(), fx.ref, s, fast, remotecache.WithJobs(2),
			remotecache.WithProgress(func(p remotecache.Progress) {
				mu.Lock()
				events[p.Digest] = append(events[p.Digest], p)
				mu.Unlock()
			}))
		if err != nil {
			t.Fatal(err)
		}
		if len(events) != len(fx.layers) {
			t.Errorf("%s: progress for %d blobs, want the %d layers", pass, len(events), len(fx.layers))
		}
		for _, h := range fx.layers {
			evs := events[digest.Digest(h.String())]
			if len(evs) < 2 {
				t.Errorf("%s: layer %s: %d events, want a start and an end", pass, h, len(evs))
				continue
			}
			for i, ev := range evs {
				if ev.Kind != "layer" || ev.Total != int64(len(fx.comp[h])) {
					t.Errorf("%s: layer %s event %d: %+v, want kind layer, total %d", pass, h, i, ev, len(fx.comp[h]))
				}
				if ev.Done != (i == len(evs)-1) {
					t.Errorf("%s: layer %s event %d of %d: Done=%v; only the last is Done", pass, h, i, len(evs), ev.Done)
				}
				if i > 0 && ev.Complete < evs[i-1].Complete {
					t.Errorf("%s: layer %s: Complete went back from %d to %d", pass, h, evs[i-1].Complete, ev.Complete)
				}
			}
			last := evs[len(evs)-1]
			if last.Err != nil || last.Complete != last.Total || last.Cached != (pass == "warm") {
				t.Errorf("%s: layer %s: last event %+v, want done, complete, Cached=%v", pass, h, last, pass == "warm")
			}
		}
		if pass == "warm" && rep.Fetched.Blobs != 0 {
			t.Errorf("warm: fetched %d blobs", rep.Fetched.Blobs)
		}
	}
}

func TestWarm_Errors(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 33, 1, 512))
	missing := reg.ref(t, "test/img:nope")
	tests := []struct {
		name string
		ctx  func() context.Context
		ref  string
		opts []remotecache.Option
		want string // in the error
	}{
		// Zero jobs would never make progress.
		{"WithJobs(0)", context.Background, fx.ref.Name(), []remotecache.Option{remotecache.WithJobs(0)}, "jobs"},
		// A tag the registry lacks is an error, not an empty report.
		{"unknown tag", context.Background, missing.Name(), nil, "nope"},
		// Offline, a tag never warmed.
		{"offline, never warmed", context.Background, fx.ref.Name(), []remotecache.Option{remotecache.WithOffline()}, "offline"},
		// A cancelled context stops it.
		{"cancelled", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, fx.ref.Name(), nil, "context canceled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openStore(t)
			ref := reg.ref(t, strings.TrimPrefix(tc.ref, reg.host+"/"))
			_, err := remotecache.Warm(tc.ctx(), ref, s, append(tc.opts, fast)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Warm: %v, want an error saying %q", err, tc.want)
			}
			if _, rerr := s.Resolve(t.Context(), ref.Name()); rerr == nil {
				t.Error("a failed Warm recorded the ref in index.json")
			}
		})
	}
}

// A Warm that fails returns only once its downloads have stopped: nothing
// keeps writing to the store behind the caller's back.
func TestWarm_FailureStopsDownloads(t *testing.T) {
	reg := newTestRegistry(t)
	fx, byPlatform := reg.pushIndex(t, "test/multi:v1", 70)
	// The first platform's layers are held, never answered while the
	// Warm runs; the second platform's config fails once both are in
	// flight.
	slow := newHolder(t)
	amd64 := layerDigests(byPlatform["linux/amd64"])
	for _, h := range amd64 {
		reg.setFault(h, slow.fault())
	}
	reg.setFault(must(byPlatform["linux/arm64/v8"].ConfigName()), func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		ctx, cancel := context.WithTimeout(r.Context(), stuck)
		defer cancel()
		slow.wait(ctx, func(held, _, _ int) bool { return held == len(amd64) })
		w.WriteHeader(http.StatusNotFound)
	})

	s, _ := openStore(t)
	warmed := make(chan error, 1)
	go func() {
		_, err := remotecache.Warm(t.Context(), fx.ref, s, fast, remotecache.WithAllPlatforms())
		warmed <- err
	}()
	var err error
	select {
	case err = <-warmed:
	case <-time.After(stuck):
		t.Fatalf("Warm has not returned after %v: it waits for the downloads it should give up", stuck)
	}
	if err == nil {
		t.Fatal("Warm: no error for a missing config")
	}
	before := storeContents(t, s)
	if held, _, _ := slow.counts(); held != len(amd64) {
		t.Fatalf("%d of the %d slow layers were in flight when the config failed", held, len(amd64))
	}
	// The held downloads were given up: each client closed its
	// connection unanswered. One that outlived Warm would keep its
	// request open, and could still write to the store once answered.
	slow.await(t, "Warm's held downloads to end", func(held, gaveUp, _ int) bool { return gaveUp == held })
	if after := storeContents(t, s); !equalStrings(before, after) {
		t.Errorf("the store changed after Warm returned:\nbefore %v\nafter  %v", before, after)
	}
}

func storeContents(t testing.TB, s *store.Store) []string {
	t.Helper()
	var out []string
	if err := s.Walk(context.Background(), func(i store.Info) error {
		out = append(out, i.Digest.String())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return sortedStrings(out)
}

// WithCounters tallies one caller's pulls: cold some fetched, warm all cached.
func TestWithCounters(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 3, 2, 1024))
	s, _ := openStore(t)
	for i, wantFetched := range []bool{true, false} {
		var c remotecache.Counters
		img, err := remotecache.Image(fx.ref, s, fast, remotecache.WithCounters(&c))
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Fatal(err)
		}
		cached, fetched := c.Cached(), c.Fetched()
		// validate.Image reads layers more than once: cold, the first
		// read of each blob is a fetch and the later ones are hits.
		if wantFetched && fetched.Blobs == 0 {
			t.Errorf("pull %d: cached %+v, fetched %+v; want fetches", i, cached, fetched)
		}
		if !wantFetched && (fetched.Blobs != 0 || cached.Blobs == 0) {
			t.Errorf("pull %d: cached %+v, fetched %+v; want all cached", i, cached, fetched)
		}
	}
}

// A pull of a new tag that a Warm is fetching waits for the Warm's GET of
// the manifest, not for its blobs: the Warm records the tag as soon as
// the manifest is in, and the pull asks with a HEAD.
func TestWarm_NewTagNotHeldByBlobs(t *testing.T) {
	// Longer than stuck: a pull that waits for the tag's lock while the
	// Warm holds it through its blobs waits until the Warm is done.
	defer remotecache.SetTagWaitMax(2 * stuck)()
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 71, 2, 4096))
	// The Warm's layers are held until the pull has returned: a pull
	// that waited for them would not return.
	blobs := newHolder(t)
	for _, h := range fx.layers {
		reg.setFault(h, blobs.fault())
	}
	s, _ := openStore(t)
	warmed := make(chan error, 1)
	go func() {
		_, err := remotecache.Warm(t.Context(), fx.ref, s, fast)
		warmed <- err
	}()
	// Once the Warm's GET by tag has arrived, pull the tag.
	reg.await(t, "the Warm's GET of the manifest", func() bool { return reg.manifestGets["v1"] > 0 })
	type pull struct {
		img v1.Image
		err error
	}
	pulled := make(chan pull, 1)
	go func() {
		img, err := remotecache.Image(fx.ref, s, fast)
		pulled <- pull{img, err}
	}()
	var p pull
	select {
	case p = <-pulled:
	case <-time.After(stuck):
		t.Fatalf("the pull has not returned after %v while the Warm's blobs are held: it waits for them", stuck)
	}
	blobs.open()
	if p.err != nil {
		t.Fatal(p.err)
	}
	if d := must(p.img.Digest()); d != fx.digest {
		t.Errorf("image digest %s, want %s", d, fx.digest)
	}
	if err := <-warmed; err != nil {
		t.Fatal(err)
	}
	if tag, heads := reg.manifestGetsOf("v1"), reg.heads(); tag != 1 || heads != 1 {
		t.Errorf("%d GETs by tag, %d HEADs; want 1 and 1", tag, heads)
	}
}

// A Warm of a tag that moved records the new digest only once the new
// image is in: if it fails, the tag still resolves (offline too) to the
// image the cache holds whole.
func TestWarm_MovedTagRecordedOnSuccess(t *testing.T) {
	reg := newTestRegistry(t)
	old := reg.pushImage(t, "test/img:v1", randomImage(t, 72, 1, 1024))
	s, _ := openStore(t)
	if _, err := remotecache.Warm(t.Context(), old.ref, s, fast); err != nil {
		t.Fatal(err)
	}
	moved := reg.pushImage(t, "test/img:v1", randomImage(t, 73, 1, 1024))
	reg.setFault(moved.layers[0], status(http.StatusNotFound))
	if _, err := remotecache.Warm(t.Context(), moved.ref, s, fast); err == nil {
		t.Fatal("Warm with a missing layer: no error")
	}
	if d, err := s.Resolve(t.Context(), old.ref.Name()); err != nil || d.Digest.String() != old.digest.String() {
		t.Errorf("after the failed Warm the tag resolves to %v (%v), want the old %s", d.Digest, err, old.digest)
	}
	reg.clearFaults()
	if _, err := remotecache.Warm(t.Context(), moved.ref, s, fast); err != nil {
		t.Fatal(err)
	}
	if d, err := s.Resolve(t.Context(), old.ref.Name()); err != nil || d.Digest.String() != moved.digest.String() {
		t.Errorf("after the Warm the tag resolves to %v (%v), want the new %s", d.Digest, err, moved.digest)
	}
}

// A Warm of a new tag that fails before its manifests are in (here: the
// index has no image for the platform) records nothing.
func TestWarm_NewTagNotRecordedOnEarlyFailure(t *testing.T) {
	reg := newTestRegistry(t)
	fx, _ := reg.pushIndex(t, "test/multi:v1", 74)
	s, _ := openStore(t)
	_, err := remotecache.Warm(t.Context(), fx.ref, s, fast, remotecache.WithPlatform(v1.Platform{OS: "plan9", Architecture: "mips"}))
	if err == nil {
		t.Fatal("Warm of a platform the index lacks: no error")
	}
	if d, err := s.Resolve(t.Context(), fx.ref.Name()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after the failed Warm the tag resolves to %v (%v), want ErrNotFound", d.Digest, err)
	}
}
