package integration_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// TestRegistryFaults makes the registry misbehave on the GETs of one layer,
// through remotecache.Image (the layer streamed to the caller and the store
// at once) and through remotecache.Warm (the layer written to the store
// only). The caller gets an error; or the layer after ggcr's retry of a
// transient 503; or, when every answer is cut after 100 KiB, the layer
// whole after the cache's resumes (Range requests from where each cut
// fell). Nothing wrong ever enters the store.
func TestRegistryFaults(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	fx0 := pushImage(t, reg, regtest.NewProxy(t, reg.Addr), "faults/img:v1", 80<<10, 600<<10, 20<<10)
	m := must(fx0.img.Manifest())
	bad := m.Layers[1] // 600 KiB, so a cut at 100 KiB falls mid-body
	// slow is a latency no operation waits out: the caller's deadline
	// passes long before, and a correct operation returns then.
	const slow = time.Minute

	isStatus := func(code int) func(error) bool {
		return func(err error) bool {
			var terr *transport.Error
			return errors.As(err, &terr) && terr.StatusCode == code
		}
	}
	faults := []struct {
		name  string
		fault regtest.Fault
		// deadline: the caller's deadline passes once the request the
		// fault applies to has reached the proxy (see cueDeadline).
		deadline bool
		// ok says the operation must succeed; else match judges its error.
		ok    bool
		match func(error) bool
		// fired is how often the fault must have applied, or -1 for at
		// least once.
		fired int64
	}{
		// A persistent 500: ggcr tries three times, then gives up.
		{name: "Status500", fault: regtest.Status(http.StatusInternalServerError),
			match: isStatus(http.StatusInternalServerError), fired: 3},
		// A transient 503 that ggcr's retry hides.
		{name: "Status503Once", fault: regtest.Status(http.StatusServiceUnavailable).Times(1),
			ok: true, fired: 1},
		// The connection reset in the middle of every answer: the
		// layer (600 KiB of random bytes, tarred and gzipped: a little
		// more) comes in seven answers of at most 100 KiB, each a Range
		// request from where the last one was cut.
		{name: "ResetMidBody", fault: regtest.ResetAfter(100 << 10), ok: true, fired: 7},
		// The same, each answer cut short with an orderly close.
		{name: "TruncatedBody", fault: regtest.TruncateAfter(100 << 10), ok: true, fired: 7},
		// Every byte arrives, one of them wrong.
		{name: "FlippedByte", fault: regtest.FlipByte(300 << 10),
			match: func(err error) bool { return errors.Is(err, store.ErrDigestMismatch) }, fired: 1},
		// A registry slower than the caller is willing to wait.
		{name: "SlowerThanDeadline", fault: regtest.Latency(slow), deadline: true,
			match: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }, fired: 1},
		// A slow registry that still answers in time.
		{name: "Slow", fault: regtest.Latency(150 * time.Millisecond), ok: true, fired: 1},
	}
	ops := []struct {
		name string
		run  func(t *testing.T, ctx context.Context, s *store.Store, fx *fixture) error
	}{
		{"Image", func(t *testing.T, ctx context.Context, s *store.Store, fx *fixture) error {
			img, err := remotecache.Image(fx.tag, s, cacheOptions(t, remotecache.WithContext(ctx))...)
			if err != nil {
				return err
			}
			got, err := tryReadImage(img)
			if err == nil {
				assertPulled(t, "pull", got, fx.want)
			}
			return err
		}},
		{"Warm", func(t *testing.T, ctx context.Context, s *store.Store, fx *fixture) error {
			_, err := remotecache.Warm(ctx, fx.tag, s, cacheOptions(t)...)
			return err
		}},
	}

	for _, op := range ops {
		for _, tc := range faults {
			t.Run(op.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				p := regtest.NewProxy(t, reg.Addr)
				fx := *fx0
				fx.tag = parseRef(t, p.Addr+"/faults/img:v1")
				s := openStore(t)
				in := p.Inject(tc.fault.Only(regtest.IsBlobGet).Only(regtest.HasDigest(bad.Digest.String())))

				ctx := t.Context()
				if tc.deadline {
					cd := newCueDeadline(ctx)
					ctx = cd
					go func() {
						if in.Await(cd, 1) == nil {
							cd.expire()
						}
					}()
				}
				start := time.Now()
				err := op.run(t, ctx, s, &fx)
				t.Logf("%s: %v (after %v)", op.name, err, time.Since(start).Round(time.Millisecond))
				if tc.deadline && time.Since(start) >= slow {
					t.Errorf("took %v: the deadline did not stop the wait", time.Since(start))
				}
				if got := in.Fired(); (tc.fired >= 0 && got != tc.fired) || got == 0 {
					t.Errorf("fault fired %d times, want %d", got, tc.fired)
				}

				if tc.ok {
					if err != nil {
						t.Fatalf("got %v, want success", err)
					}
					assertHolds(t, s, fx.blobs(t)...)
				} else {
					if err == nil {
						t.Fatal("no error")
					}
					if !tc.match(err) {
						t.Errorf("error %q is not the expected kind", err)
					}
					// Nothing at all at the bad layer's name.
					assertLacks(t, s, toDigest(bad.Digest))
				}
				assertStoreSound(t, s)

				// Once the registry behaves, the same store heals: a pull
				// fetches at most what is missing, and verifies.
				in.Remove()
				img, err := remotecache.Image(fx.tag, s, cacheOptions(t)...)
				if err != nil {
					t.Fatalf("Image after the fault: %v", err)
				}
				assertPulled(t, "pull after the fault", readImage(t, img), fx.want)
				assertHolds(t, s, fx.blobs(t)...)
				assertStoreSound(t, s)
			})
		}
	}
}

// cueDeadline is a context whose deadline passes when expire is called,
// or when its parent ends: Done closes, and Err is
// context.DeadlineExceeded, as with context.WithTimeout. A test expires it
// once the operation is where the test wants the deadline to find it (a
// request held by the registry), which a timeout set at the start reaches
// at a moment a busy machine decides: before the operation got there, or
// well after.
type cueDeadline struct {
	context.Context
	done chan struct{}
	once sync.Once
}

func newCueDeadline(parent context.Context) *cueDeadline {
	c := &cueDeadline{Context: parent, done: make(chan struct{})}
	context.AfterFunc(parent, c.expire)
	return c
}

func (c *cueDeadline) expire() { c.once.Do(func() { close(c.done) }) }

func (c *cueDeadline) Done() <-chan struct{} { return c.done }

func (c *cueDeadline) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}
