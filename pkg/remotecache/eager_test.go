package remotecache_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// front notes the order of what a server in front of a test registry
// (serveFront) sees.
type front struct {
	mu     sync.Mutex
	events []string
}

func (f *front) note(e string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, e)
}

func (f *front) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
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

// serveFront starts a server in front of reg that lets handle answer
// requests first (when it returns true), and returns its host.
func serveFront(t *testing.T, reg *testRegistry, handle func(w http.ResponseWriter, req *http.Request) bool) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if handle != nil && handle(w, req) {
			return
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func isPing(req *http.Request) bool { return req.URL.Path == "/v2/" }

// An anonymous pull asks for a tag's manifest (GET for a new tag, HEAD
// for a recorded one) without waiting for ggcr's handshake: here the
// registry holds its answer to the ping until that request has arrived.
// With a WithRemote option, the pull may be authenticated, and the
// handshake comes first, as in ggcr.
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
			var (
				mu      sync.Mutex
				f       *front
				arrived chan struct{}
			)
			host := serveFront(t, reg, func(w http.ResponseWriter, req *http.Request) bool {
				mu.Lock()
				f, arrived := f, arrived
				mu.Unlock()
				switch {
				case isPing(req):
					f.note("ping")
					if tc.eager {
						select {
						case <-arrived:
						case <-time.After(5 * time.Second):
						}
					}
					f.note("ping answered")
				case strings.HasSuffix(req.URL.Path, "/manifests/v1"):
					if ua := req.Header.Get("User-Agent"); tc.eager && len(tc.opts) > 0 && !strings.HasPrefix(ua, "test ") {
						t.Errorf("User-Agent of the manifest %s: %q, want it to start with the one given", req.Method, ua)
					}
					f.note("tag " + req.Method)
					select {
					case <-arrived:
					default:
						close(arrived)
					}
				}
				return false
			})
			ref := must(name.ParseReference(host + "/test/img:v1"))
			s, _ := openStore(t)
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				mu.Lock()
				f, arrived = &front{}, make(chan struct{})
				mu.Unlock()
				img, err := remotecache.Image(ref, s, tc.opts...)
				if err != nil {
					t.Fatal(err)
				}
				fx.assertImage(t, img, fx.img)
				ev := f.seen()
				events := strings.Join(ev, ", ")
				first := slices.Index(ev, "tag "+method)
				if first < 0 {
					t.Fatalf("no %s by tag: %s", method, events)
				}
				before := !slices.Contains(ev[:first], "ping answered")
				if before != tc.eager {
					t.Errorf("%s by tag before the ping was answered: %v, want %v (events: %s)", method, before, tc.eager, events)
				}
				if n := f.count("tag GET") + f.count("tag HEAD"); n != 1 {
					t.Errorf("%d requests of the manifest by tag, want 1 (events: %s)", n, events)
				}
				if d, err := s.Resolve(t.Context(), ref.Name()); err != nil || d.Digest.String() != fx.digest.String() {
					t.Errorf("the tag resolves to %v (%v), want %s", d.Digest, err, fx.digest)
				}
			}
		})
	}
}

// tokenRegistry puts bearer-token authentication in front of a test
// registry, as Docker Hub does even for anonymous pulls: every /v2/
// request without the token is answered 401 with the challenge.
func tokenRegistry(t *testing.T, reg *testRegistry, f *front) string {
	t.Helper()
	var host string
	host = serveFront(t, reg, func(w http.ResponseWriter, req *http.Request) bool {
		if req.URL.Path == "/token" {
			f.note("token")
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"token":"t0k3n"}`)
			return true
		}
		authed := req.Header.Get("Authorization") == "Bearer t0k3n"
		if strings.HasSuffix(req.URL.Path, "/manifests/v1") {
			f.note(fmt.Sprintf("tag %s, token %v", req.Method, authed))
		}
		if !authed {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, host))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}`, http.StatusUnauthorized)
			return true
		}
		return false
	})
	return host
}

// A registry that wants a token even from anonymous pulls answers the
// early GET (or HEAD) 401: the pull goes on through ggcr's handshake, with one
// extra request. With credentials in the keychain, no request goes
// without them.
func TestImage_TagAskedOnTokenRegistry(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 42, 2, 4096))
	for _, tc := range []struct {
		name      string
		opts      []remotecache.Option
		untokened int
	}{
		{"anonymous", nil, 1},
		{"keychain with credentials", []remotecache.Option{remotecache.WithKeychain(fixedKeychain{&authn.Basic{Username: "u", Password: "p"}})}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &front{}
			host := tokenRegistry(t, reg, f)
			ref := must(name.ParseReference(host + "/test/img:v1"))
			s, _ := openStore(t)
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				img, err := remotecache.Image(ref, s, tc.opts...)
				if err != nil {
					t.Fatal(err)
				}
				fx.assertImage(t, img, fx.img)
				if n, m := f.count("tag "+method+", token false"), f.count("tag "+method+", token true"); n != tc.untokened || m != 1 {
					t.Errorf("%ss by tag: %d without the token, %d with; want %d and 1 (events: %v)", method, n, m, tc.untokened, f.seen())
				}
			}
		})
	}
}

type fixedKeychain struct{ authn.Authenticator }

func (k fixedKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return k.Authenticator, nil
}

type failingKeychain struct{}

func (failingKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return nil, errors.New("credential helper crashed")
}

// A keychain that fails is the pull's error, named as such, and nothing
// is sent to the registry.
func TestImage_KeychainError(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 43, 1, 1024))
	s, _ := openStore(t)
	reg.reset()
	_, err := remotecache.Image(fx.ref, s, remotecache.WithKeychain(failingKeychain{}))
	if err == nil || !strings.Contains(err.Error(), "credential helper crashed") {
		t.Fatalf("Image with a failing keychain: %v", err)
	}
	if n := reg.requestCount(); n != 0 {
		t.Errorf("%d requests reached the registry", n)
	}
}

// The early GET's answer is held to the digest the registry names, as
// ggcr's is: a changed body is refused and not stored.
func TestImage_NewTagGetCheckedAgainstHeader(t *testing.T) {
	reg := newTestRegistry(t)
	reg.pushImage(t, "test/img:v1", randomImage(t, 44, 1, 1024))
	ref := tagBodyChanged(t, reg, "test/img:v1")
	s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := remotecache.Image(ref, s, remotecache.WithContext(ctx)); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("anonymous Image with a manifest that does not match its Docker-Content-Digest: %v, want ErrDigestMismatch", err)
	}
	if d, err := s.Resolve(t.Context(), ref.Name()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the tag resolves to %v (%v), want ErrNotFound", d.Digest, err)
	}
	// One GET: the early one was refused, not passed over to ggcr's.
	if n := reg.manifestGetsOf("v1"); n != 1 {
		t.Errorf("%d GETs by tag, want 1", n)
	}
}
