package remotecache_test

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// mirrored is an image in an upstream registry and in a mirror of it.
type mirrored struct {
	up, mirror *testRegistry
	fx         *fixture
}

func newMirrored(t *testing.T, seed int64) *mirrored {
	t.Helper()
	m := &mirrored{up: newTestRegistry(t), mirror: newTestRegistry(t)}
	img := randomImage(t, seed, 3, 2048)
	m.fx = m.up.pushImage(t, "test/img:v1", img)
	if err := remote.Write(m.mirror.ref(t, "test/img:v1"), img); err != nil {
		t.Fatal(err)
	}
	m.mirror.reset()
	return m
}

func (m *mirrored) opts(mirrors ...remotecache.Mirror) []remotecache.Option {
	return []remotecache.Option{fast, remotecache.WithMirrors(m.up.host, mirrors...)}
}

func (m *mirrored) blobGets(reg *testRegistry) int {
	n, _ := reg.totalBlobGets()
	return n
}

// Blobs come from the mirror when it has them; the tag is asked of the
// upstream, since the mirror may not resolve tags; the report says where
// each blob came from.
func TestWarm_MirrorFirst(t *testing.T) {
	m := newMirrored(t, 91)
	s, _ := openStore(t)
	rep, err := remotecache.Warm(t.Context(), m.fx.ref, s, m.opts(remotecache.Mirror{URL: "http://" + m.mirror.host})...)
	if err != nil {
		t.Fatal(err)
	}
	if n := m.blobGets(m.up); n != 0 {
		t.Errorf("%d blob GETs at the upstream, want 0", n)
	}
	if n := m.blobGets(m.mirror); n != 4 {
		t.Errorf("%d blob GETs at the mirror, want 4 (config and 3 layers)", n)
	}
	if got := rep.Hosts["http://"+m.mirror.host]; got.Blobs != 4 {
		t.Errorf("report: %+v from the mirror, want 4 blobs (hosts: %v)", got, rep.Hosts)
	}
	assertClean(t, s)
}

// A mirror that is down, empty, or sends wrong bytes is passed over for
// the upstream within the call, with one warning per mirror and kind, and
// its wrong bytes are never stored.
func TestWarm_MirrorPassedOver(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, m *mirrored) string // the mirror's URL
		kind  string
	}{
		{"down", func(t *testing.T, m *mirrored) string {
			dead := newTestRegistry(t)
			dead.srv.Close()
			return "http://" + dead.host
		}, "unreachable"},
		{"empty", func(t *testing.T, m *mirrored) string {
			return "http://" + newTestRegistry(t).host
		}, "404"},
		{"wrong bytes", func(t *testing.T, m *mirrored) string {
			for _, h := range m.fx.layers {
				m.mirror.setFault(h, flipByte())
			}
			return "http://" + m.mirror.host
		}, "wrong bytes"},
		{"503", func(t *testing.T, m *mirrored) string {
			for _, h := range append(m.fx.layers, m.fx.config) {
				m.mirror.setFault(h, status(http.StatusServiceUnavailable))
			}
			return "http://" + m.mirror.host
		}, "503"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMirrored(t, 92)
			url := tc.setup(t, m)
			log, rec := newLogger()
			s, _ := openStore(t)
			_, err := remotecache.Warm(t.Context(), m.fx.ref, s, append(m.opts(remotecache.Mirror{URL: url}), remotecache.WithLogger(log))...)
			if err != nil {
				t.Fatal(err)
			}
			assertClean(t, s)
			for _, h := range m.fx.layers {
				assertStored(t, s, h)
				if n := m.up.gets(h); n != 1 {
					t.Errorf("layer %s: %d GETs at the upstream, want 1", h, n)
				}
			}
			n := 0
			for _, w := range rec.warnings() {
				if strings.Contains(w, "mirror passed over") && strings.Contains(w, tc.kind) {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d warnings of the mirror's %q, want 1: %q", n, tc.kind, rec.warnings())
			}
		})
	}
}

// A streaming pull handed a mirror's wrong bytes fails with
// ErrDigestMismatch, and the store gets the right blob from the upstream
// in the same call: the next read succeeds from the cache.
func TestImage_MirrorWrongBytesHealInCall(t *testing.T) {
	m := newMirrored(t, 93)
	target := m.fx.layers[0]
	m.mirror.setFault(target, flipByte())
	s, _ := openStore(t)
	img := must(remotecache.Image(m.fx.ref, s, m.opts(remotecache.Mirror{URL: "http://" + m.mirror.host})...))
	l := must(img.LayerByDigest(target))
	if _, err := tryReadAll(l.Compressed); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("reading the layer: %v, want ErrDigestMismatch", err)
	}
	assertStored(t, s, target)
	if got := readAll(t, l.Compressed); !bytes.Equal(got, m.fx.comp[target]) {
		t.Error("wrong bytes after the heal")
	}
}

// With the upstream down, a mirror that may resolve tags serves a cold
// pull whole, and its headers go with every request to it, also when the
// caller gave ggcr a transport of its own (WithRemote), which is the
// upstream's.
func TestImage_MirrorResolvesWhenUpstreamIsDown(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []remotecache.Option
	}{
		{"plain", nil},
		{"caller's transport", []remotecache.Option{remotecache.WithRemote(remote.WithTransport(http.DefaultTransport))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMirrored(t, 94)
			var sawHeader, requests atomic.Int64
			front := newInterceptor(t, m.mirror, func(w http.ResponseWriter, req *http.Request) bool {
				requests.Add(1)
				if req.Header.Get("X-Fleet") == "runner-7" {
					sawHeader.Add(1)
				}
				return false
			})
			front.armed.Store(true)
			m.up.srv.Close()
			s, _ := openStore(t)
			mirror := remotecache.Mirror{URL: "http://" + front.host(), Resolve: true, Header: http.Header{"X-Fleet": {"runner-7"}}}
			img, err := remotecache.Image(m.fx.ref, s, append(m.opts(mirror), tc.extra...)...)
			if err != nil {
				t.Fatal(err)
			}
			m.fx.assertImage(t, img, m.fx.img)
			if r, h := requests.Load(), sawHeader.Load(); r == 0 || h != r {
				t.Errorf("%d of %d requests to the mirror carried its header", h, r)
			}
		})
	}
}

// ParseMirror reads REGISTRY=URL and refuses what is not.
func TestParseMirror(t *testing.T) {
	reg, mirror, err := remotecache.ParseMirror("docker.io=http://127.0.0.1:5000/proxy")
	if err != nil || reg != "docker.io" || mirror.URL != "http://127.0.0.1:5000/proxy" {
		t.Errorf("ParseMirror: %q, %+v, %v", reg, mirror, err)
	}
	for _, bad := range []string{
		"docker.io",                       // no URL
		"=http://127.0.0.1:5000",          // no registry
		"docker.io=127.0.0.1:5000",        // no scheme
		"docker.io=ftp://127.0.0.1",       // not http(s)
		"docker.io=http://",               // no host
		"docker.io=http://u:p@127.0.0.1/", // credentials belong in the keychain
		"Not A Registry=http://127.0.0.1", // a registry name that is not one
	} {
		if _, _, err := remotecache.ParseMirror(bad); err == nil {
			t.Errorf("ParseMirror(%q): no error", bad)
		}
	}
	// WithMirrors checks its mirrors as it is given them.
	if _, err := remotecache.Image(must(name.ParseReference("alpine")), nil, remotecache.WithMirrors("docker.io", remotecache.Mirror{URL: "http://"})); err == nil || !strings.Contains(err.Error(), "no host") {
		t.Errorf("WithMirrors with a bad URL: %v, want an error", err)
	}
}
