package remotecache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/internal/testhook"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// front is a server in front of a test registry that notes the order of
// what it sees. It holds its answer to the ping (GET /v2/) until the
// first request for a manifest by tag has arrived, or for hold at most,
// so a manifest request that waits for the handshake comes after "ping
// answered", and one that does not comes before it. hold is long when
// the test expects the manifest request first, and short otherwise.
// first, if set, may answer that first manifest request itself, and
// every later one too when every is set.
type front struct {
	srv   *httptest.Server
	hold  time.Duration
	first func(w http.ResponseWriter, req *http.Request) bool
	every bool

	mu       sync.Mutex
	events   []string
	arrived  chan struct{}
	firstTLS bool // the first manifest request came over TLS
}

// holdFor is the hold of a front for a test that expects (early) or does
// not expect the manifest request before the ping is answered.
func holdFor(early bool) time.Duration {
	if early {
		return 5 * time.Second
	}
	return 300 * time.Millisecond
}

func newFront(t *testing.T, reg *testRegistry, hold time.Duration, tls bool) *front {
	t.Helper()
	f := &front{hold: hold}
	f.reset()
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if f.serve(w, req) {
			return
		}
		reg.ServeHTTP(w, req)
	}))
	if tls {
		f.srv.StartTLS()
	} else {
		f.srv.Start()
	}
	t.Cleanup(f.srv.Close)
	return f
}

// host is the registry host of the front, for references.
func (f *front) host() string { return f.srv.Listener.Addr().String() }

// reset starts a new pull: no events, no manifest request yet.
func (f *front) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events, f.arrived = nil, make(chan struct{})
}

func (f *front) note(e string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, e)
}

func (f *front) serve(w http.ResponseWriter, req *http.Request) bool {
	f.mu.Lock()
	arrived := f.arrived
	f.mu.Unlock()
	switch {
	case req.URL.Path == "/v2/":
		f.note("ping")
		select {
		case <-arrived:
		case <-time.After(f.hold):
		}
		f.note("ping answered")
	case strings.Contains(req.URL.Path, "/manifests/") && !strings.Contains(req.URL.Path, ":"):
		f.mu.Lock()
		f.events = append(f.events, "tag "+req.Method)
		isFirst := false
		select {
		case <-arrived:
		default:
			isFirst = true
			f.firstTLS = req.TLS != nil
			close(arrived)
		}
		f.mu.Unlock()
		if (isFirst || f.every) && f.first != nil {
			return f.first(w, req)
		}
	}
	return false
}

func (f *front) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

func (f *front) count(e string) int {
	n := 0
	for _, s := range f.seen() {
		if s == e {
			n++
		}
	}
	return n
}

// early reports whether e happened before the ping was answered.
func (f *front) early(t *testing.T, e string) bool {
	t.Helper()
	ev := f.seen()
	i := slices.Index(ev, e)
	if i < 0 {
		t.Fatalf("no %q: %v", e, ev)
	}
	return !slices.Contains(ev[:i], "ping answered")
}

// noGrace is the context of a pull whose requests a test counts. In
// production, an early request with no answer once ggcr's handshake has
// been done for a while (eagerGraceMin at least) is given up, and ggcr
// asks instead: a goroutine stalled that long on a busy machine would
// make one request by tag two. Under testhook.WithoutEagerGrace the
// early request is waited for until it is answered; the minute bounds a
// pull whose early request never is, so that it fails instead of hanging.
func noGrace(t *testing.T) remotecache.Option {
	ctx, cancel := context.WithTimeout(testhook.WithoutEagerGrace(t.Context()), time.Minute)
	t.Cleanup(cancel)
	return remotecache.WithContext(ctx)
}

// An anonymous pull asks for a tag's manifest (GET for a new tag, HEAD
// for a recorded one) without waiting for ggcr's handshake. With a
// WithRemote option, the pull may be authenticated, and the handshake
// comes first, as in ggcr.
func TestImage_TagAskedBeforeHandshake(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 41, 2, 4096))
	for _, tc := range []struct {
		name  string
		opts  []remotecache.Option
		eager bool
	}{
		{"anonymous", nil, true},
		{"keychain without credentials", []remotecache.Option{remotecache.WithKeychain(authn.NewMultiKeychain()), remotecache.WithUserAgent("test")}, true},
		{"WithRemote", []remotecache.Option{fast}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFront(t, reg, holdFor(tc.eager), false)
			var agents []string
			f.first = func(w http.ResponseWriter, req *http.Request) bool {
				agents = append(agents, req.Header.Get("User-Agent"))
				return false
			}
			ref := must(name.ParseReference(f.host() + "/test/img:v1"))
			s, _ := openStore(t)
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				f.reset()
				img, err := remotecache.Image(ref, s, append(tc.opts, noGrace(t))...)
				if err != nil {
					t.Fatal(err)
				}
				fx.assertImage(t, img, fx.img)
				if early := f.early(t, "tag "+method); early != tc.eager {
					t.Errorf("%s by tag before the ping was answered: %v, want %v (events: %v)", method, early, tc.eager, f.seen())
				}
				if n := f.count("tag GET") + f.count("tag HEAD"); n != 1 {
					t.Errorf("%d requests of the manifest by tag, want 1 (events: %v)", n, f.seen())
				}
				if d, err := s.Resolve(t.Context(), ref.Name()); err != nil || d.Digest.String() != fx.digest.String() {
					t.Errorf("the tag resolves to %v (%v), want %s", d.Digest, err, fx.digest)
				}
			}
			for _, ua := range agents {
				if tc.eager && len(tc.opts) > 0 && !strings.HasPrefix(ua, "test ") {
					t.Errorf("User-Agent of the early request: %q, want it to start with the one given", ua)
				}
			}
		})
	}
}

// Under testhook.WithoutEagerGrace, an early GET answered well after
// ggcr's handshake is still the pull's only request by tag: in production
// it would have been given up and ggcr would have asked again.
func TestImage_EarlyRequestWaitedForWithoutGrace(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 49, 1, 1024))
	f := newFront(t, reg, 0, false)
	f.first = func(w http.ResponseWriter, req *http.Request) bool {
		// Answer once the ping has been, and then some: past the grace
		// the pull would give in production.
		for !slices.Contains(f.seen(), "ping answered") {
			select {
			case <-req.Context().Done():
				return true
			case <-time.After(5 * time.Millisecond):
			}
		}
		time.Sleep(300 * time.Millisecond)
		return false
	}
	ref := must(name.ParseReference(f.host() + "/test/img:v1"))
	s, _ := openStore(t)
	img, err := remotecache.Image(ref, s, noGrace(t))
	if err != nil {
		t.Fatal(err)
	}
	fx.assertImage(t, img, fx.img)
	if n := f.count("tag GET"); n != 1 {
		t.Errorf("%d GETs by tag, want 1: the early one, waited for (events: %v)", n, f.seen())
	}
}

// dialAll is a transport that dials addr whatever the host asked for, and
// trusts the test server's certificate: a registry named example.com or
// 10.1.2.3 that is a test server on loopback.
func dialAll(f *front) http.RoundTripper {
	tr := f.srv.Client().Transport.(*http.Transport).Clone()
	addr := f.host()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	return tr
}

// The early request goes over https, as ggcr's handshake tries first,
// except on loopback. A registry ggcr may reach over either (a private
// address, name.Insecure) gets no early request: its handshake decides.
func TestImage_EarlyRequestScheme(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 45, 1, 1024))
	for _, tc := range []struct {
		name       string
		registry   string
		tls, eager bool
	}{
		// httptest's certificate names example.com.
		{"public name", "example.com", true, true},
		{"private address", "10.1.2.3:5000", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFront(t, reg, holdFor(tc.eager), tc.tls)
			ref := must(name.ParseReference(tc.registry + "/test/img:v1"))
			s, _ := openStore(t)
			img, err := remotecache.Image(ref, s, remotecache.WithTransport(dialAll(f)))
			if err != nil {
				t.Fatal(err)
			}
			fx.assertImage(t, img, fx.img)
			if early := f.early(t, "tag GET"); early != tc.eager {
				t.Errorf("GET by tag before the ping was answered: %v, want %v (events: %v)", early, tc.eager, f.seen())
			}
			if f.firstTLS != tc.tls {
				t.Errorf("first manifest request over TLS: %v, want %v", f.firstTLS, tc.tls)
			}
		})
	}
}

// An early request that is not answered 200 with a known manifest is
// dropped, and ggcr asks instead: the pull goes on, one request later.
// An answer that ggcr's would share (a 404, a manifest too large) ends
// the pull with ggcr's error.
func TestImage_EarlyRequestFallsBack(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 46, 1, 1024))
	type answer func(w http.ResponseWriter, req *http.Request) bool
	for _, tc := range []struct {
		name   string
		head   bool // the fault is in the HEAD of a recorded tag
		every  bool // every request by tag gets the answer, not only the early one
		answer answer
		want   string // a pull error, or "" for a pull that goes on
	}{
		{name: "no manifest media type", answer: func(w http.ResponseWriter, req *http.Request) bool {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, "<html>a captive portal</html>")
			return true
		}},
		{name: "redirect", answer: func(w http.ResponseWriter, req *http.Request) bool {
			http.Redirect(w, req, "https://login.example/", http.StatusFound)
			return true
		}},
		{name: "server error", answer: func(w http.ResponseWriter, req *http.Request) bool {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return true
		}},
		{name: "no answer", answer: func(w http.ResponseWriter, req *http.Request) bool {
			select { // until the client gives up on it
			case <-req.Context().Done():
			case <-time.After(time.Minute):
			}
			return true
		}},
		{name: "connection cut", answer: func(w http.ResponseWriter, req *http.Request) bool {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return true
		}},
		{name: "body cut", answer: func(w http.ResponseWriter, req *http.Request) bool {
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Content-Length", "1000")
			fmt.Fprint(w, `{"schemaVersion":2,`)
			w.(http.Flusher).Flush()
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close()
			}
			return true
		}},
		{name: "HEAD without a digest", head: true, answer: func(w http.ResponseWriter, req *http.Request) bool {
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			return true
		}},
		{name: "not found", answer: func(w http.ResponseWriter, req *http.Request) bool {
			return false // the tag below does not exist
		}, want: "MANIFEST_UNKNOWN"},
		// Every GET by tag, so that the limit is shown to hold whichever
		// request the pull uses: the early one, or ggcr's when the early
		// one was given up on (a busy machine can delay its answer past
		// its grace).
		{name: "manifest too large", every: true, answer: func(w http.ResponseWriter, req *http.Request) bool {
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Content-Length", strconv.Itoa(9<<20))
			w.Write(bytes.Repeat([]byte(" "), 9<<20))
			return true
		}, want: "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFront(t, reg, holdFor(true), false)
			tag := "v1"
			if tc.want == "MANIFEST_UNKNOWN" {
				tag = "v404"
			}
			ref := must(name.ParseReference(f.host() + "/test/img:" + tag))
			s, _ := openStore(t)
			if tc.head {
				if _, err := remotecache.Image(ref, s); err != nil {
					t.Fatal(err)
				}
				f.reset()
			}
			f.first, f.every = tc.answer, tc.every
			start := time.Now()
			img, err := remotecache.Image(ref, s)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, remotecache.ErrOffline) {
					t.Fatalf("Image: %v, want an error with %q, not ErrOffline", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fx.assertImage(t, img, fx.img)
			method := http.MethodGet
			if tc.head {
				method = http.MethodHead
			}
			if n := f.count("tag " + method); n != 2 {
				t.Errorf("%d %ss by tag, want 2: the early one and ggcr's (events: %v)", n, method, f.seen())
			}
			// "no answer" holds the early request for a minute unless the
			// pull gives up on it; a pull that waited for it takes that
			// long, one that did not takes well under half of it however
			// busy the machine.
			if d := time.Since(start); d > 30*time.Second {
				t.Errorf("the pull took %v: the early request held it up", d)
			}
		})
	}
}

// tokenRegistry puts bearer-token authentication in front of a test
// registry, as Docker Hub does even for anonymous pulls: every /v2/
// request without the token is answered 401 with the challenge.
func tokenRegistry(t *testing.T, reg *testRegistry) *front {
	t.Helper()
	f := newFront(t, reg, 0, false)
	inner := f.srv.Config.Handler
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"token":"t0k3n"}`)
			return
		}
		authed := req.Header.Get("Authorization") == "Bearer t0k3n"
		if strings.HasSuffix(req.URL.Path, "/manifests/v1") {
			f.note(fmt.Sprintf("tag %s, token %v", req.Method, authed))
		}
		if !authed {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, f.host()))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}`, http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, req)
	})
	return f
}

// A registry that wants a token even from anonymous pulls answers the
// early GET (or HEAD) 401: the pull goes on through ggcr's handshake,
// with one extra request. With credentials in the keychain, no request
// goes without them, and the keychain is asked once per pull.
func TestImage_TagAskedOnTokenRegistry(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 42, 2, 4096))
	kc := &countingKeychain{auth: &authn.Basic{Username: "u", Password: "p"}}
	for _, tc := range []struct {
		name      string
		opts      []remotecache.Option
		untokened int
	}{
		{"anonymous", nil, 1},
		{"keychain with credentials", []remotecache.Option{remotecache.WithKeychain(kc)}, 0},
		// A keychain in WithRemote replaces WithKeychain's.
		{"keychain in WithRemote", []remotecache.Option{remotecache.WithKeychain(failingKeychain{}), fast, remotecache.WithRemote(remote.WithAuthFromKeychain(kc))}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tokenRegistry(t, reg)
			ref := must(name.ParseReference(f.host() + "/test/img:v1"))
			s, _ := openStore(t)
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				kc.n.Store(0)
				img, err := remotecache.Image(ref, s, append(tc.opts, noGrace(t))...)
				if err != nil {
					t.Fatal(err)
				}
				fx.assertImage(t, img, fx.img)
				if n, m := f.count("tag "+method+", token false"), f.count("tag "+method+", token true"); n != tc.untokened || m != 1 {
					t.Errorf("%ss by tag: %d without the token, %d with; want %d and 1 (events: %v)", method, n, m, tc.untokened, f.seen())
				}
				if n := kc.n.Load(); len(tc.opts) > 0 && n != 1 {
					t.Errorf("%s: the keychain was asked %d times, want 1", method, n)
				}
			}
		})
	}
}

type countingKeychain struct {
	auth authn.Authenticator
	n    atomic.Int32
}

func (k *countingKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	k.n.Add(1)
	return k.auth, nil
}

type failingKeychain struct{}

func (failingKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return nil, errors.New("credential helper crashed")
}

// A keychain that fails sends nothing to the registry. As with a failing
// keychain in WithRemote, the pull fails with the keychain's error, for a
// tag the cache recorded too: a failing credential helper is not a
// registry that cannot be reached. ResolveOffline is how a recorded tag
// is used without asking.
func TestImage_KeychainError(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 43, 1, 1024))
	s, _ := openStore(t)
	reg.reset()
	_, err := remotecache.Image(fx.ref, s, remotecache.WithKeychain(failingKeychain{}))
	if err == nil || !strings.Contains(err.Error(), "credential helper crashed") {
		t.Fatalf("Image of a new tag with a failing keychain: %v", err)
	}
	if n := reg.requestCount(); n != 0 {
		t.Errorf("%d requests reached the registry", n)
	}
	img, err := remotecache.Image(fx.ref, s)
	if err != nil {
		t.Fatal(err)
	}
	fx.assertImage(t, img, fx.img) // reads and caches every blob
	_, err = remotecache.Image(fx.ref, s, remotecache.WithKeychain(failingKeychain{}))
	if err == nil || !strings.Contains(err.Error(), "credential helper crashed") || errors.Is(err, remotecache.ErrOffline) {
		t.Fatalf("Image of a recorded tag with a failing keychain: %v, want the keychain's error", err)
	}
	img, err = remotecache.Image(fx.ref, s, remotecache.WithKeychain(failingKeychain{}), remotecache.WithResolve(remotecache.ResolveOffline))
	if err != nil {
		t.Fatalf("Image of a recorded tag, offline, with a failing keychain: %v", err)
	}
	fx.assertImage(t, img, fx.img)
}

// The early GET's answer is held to the digest the registry names, as
// ggcr's is: a changed body is refused and not stored, and not asked
// for again through ggcr.
func TestImage_EarlyGetCheckedAgainstHeader(t *testing.T) {
	reg := newTestRegistry(t)
	reg.pushImage(t, "test/img:v1", randomImage(t, 44, 1, 1024))
	f := newFront(t, reg, holdFor(true), false)
	f.first = func(w http.ResponseWriter, req *http.Request) bool {
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, req)
		body := append(bytes.TrimRight(rec.Body.Bytes(), "\n"), ' ') // the same JSON, other bytes
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body)
		return true
	}
	ref := must(name.ParseReference(f.host() + "/test/img:v1"))
	s, _ := openStore(t)
	if _, err := remotecache.Image(ref, s, noGrace(t)); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("Image with a manifest that does not match its Docker-Content-Digest: %v, want ErrDigestMismatch", err)
	}
	if !f.early(t, "tag GET") || f.count("tag GET") != 1 {
		t.Errorf("want one GET by tag, before the ping was answered (events: %v)", f.seen())
	}
	if d, err := s.Resolve(t.Context(), ref.Name()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the tag resolves to %v (%v), want ErrNotFound", d.Digest, err)
	}
}

// timeoutDial is a transport whose dials time out, as to a host that is
// down or behind a VPN that is off.
func timeoutDial() http.RoundTripper {
	return &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: context.DeadlineExceeded}
	}}
}

// A registry whose dials time out is unreachable: a recorded tag resolves
// offline, in both kinds of pull. Only the caller's own context running
// out calls the pull off.
func TestImage_DialTimeoutResolvesOffline(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 47, 1, 1024))
	for _, tc := range []struct {
		name string
		opts []remotecache.Option
	}{
		{"anonymous", nil},
		{"WithRemote", []remotecache.Option{fast}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openStore(t)
			if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err != nil {
				t.Fatal(err)
			}
			img, err := remotecache.Image(fx.ref, s, append(tc.opts, remotecache.WithTransport(timeoutDial()))...)
			if err != nil {
				t.Fatalf("Image of a warmed tag, dials timing out: %v", err)
			}
			fx.assertImage(t, img, fx.img)
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			if _, err := remotecache.Image(fx.ref, s, append(tc.opts, remotecache.WithContext(ctx))...); err == nil {
				t.Error("Image with a context called off: no error")
			}
		})
	}
}

// When the early request and ggcr's handshake both fail, the handshake's
// error is the pull's: ggcr would forget it and ping again.
func TestImage_FailedHandshakeNotRepeated(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 48, 1, 1024))
	f := newFront(t, reg, 0, false)
	inner := f.srv.Config.Handler
	var pings atomic.Int32
	forbid := atomic.Bool{}
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if forbid.Load() && (req.URL.Path == "/v2/" || strings.Contains(req.URL.Path, "/manifests/")) {
			if req.URL.Path == "/v2/" {
				pings.Add(1)
			}
			http.Error(w, `{"errors":[{"code":"DENIED","message":"no"}]}`, http.StatusForbidden)
			return
		}
		inner.ServeHTTP(w, req)
	})
	ref := must(name.ParseReference(f.host() + "/test/img:v1"))
	s, _ := openStore(t)
	img, err := remotecache.Image(ref, s)
	if err != nil {
		t.Fatal(err)
	}
	fx.assertImage(t, img, fx.img)
	forbid.Store(true)
	v2 := must(name.ParseReference(f.host() + "/test/img:v2"))
	for _, tc := range []struct {
		what string
		ref  name.Reference
	}{{"recorded tag (HEAD)", ref}, {"new tag (GET)", v2}} {
		pings.Store(0)
		_, err := remotecache.Image(tc.ref, s)
		if err == nil || !strings.Contains(err.Error(), "DENIED") {
			t.Errorf("%s: Image with a forbidding registry: %v, want its DENIED", tc.what, err)
		}
		if n := pings.Load(); n != 1 {
			t.Errorf("%s: %d pings, want 1", tc.what, n)
		}
	}
}
