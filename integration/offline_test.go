package integration_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

// TestOffline warms an image, stops the registry, and pulls again: by tag
// and by digest, with and without WithOffline. Everything warmed reads in
// full from the cache; a tag never warmed is a clear error.
func TestOffline(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	fx := pushImage(t, reg, p, "offline/img:v1", 120<<10, 40<<10)
	regtest.PushImage(t, reg.Addr+"/offline/img:never", 1000)
	s := openStore(t)
	if _, err := remotecache.Warm(t.Context(), fx.tag, s, cacheOptions(t)...); err != nil {
		t.Fatalf("Warm: %v", err)
	}
	reg.Stop()
	never := parseRef(t, p.Addr+"/offline/img:never")

	tests := []struct {
		name    string
		ref     name.Reference
		offline bool // WithOffline
		// requests says whether requests may reach the proxy: only a
		// tag, online, asks the registry.
		requests bool
		// warning is a substring of the warning that must be logged,
		// or "" for none.
		warning string
	}{
		// The tag's HEAD fails; the tag resolves from index.json.
		{"tag, online", fx.tag, false, true, "registry unreachable"},
		// A digest needs no registry once cached.
		{"digest, online", fx.dig, false, false, ""},
		{"tag, WithOffline", fx.tag, true, false, "resolved offline"},
		{"digest, WithOffline", fx.dig, true, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p.Reset()
			logger, logs := newLogger(t)
			opts := []remotecache.Option{remotecache.WithLogger(logger)}
			if tc.offline {
				opts = append(opts, remotecache.WithOffline())
			}
			img, err := remotecache.Image(tc.ref, s, cacheOptions(t, opts...)...)
			if err != nil {
				t.Fatalf("Image: %v", err)
			}
			assertPulled(t, "pull", readImage(t, img), fx.want)
			if err := validate.Image(img); err != nil {
				t.Errorf("validate.Image: %v", err)
			}
			st := p.Stats()
			if tc.requests && st.Requests == 0 {
				t.Errorf("no request reached the proxy: the test does not test the fallback")
			}
			if !tc.requests && st.Requests != 0 {
				t.Errorf("%d requests reached the proxy, want none: %+v", st.Requests, st)
			}
			assertStats(t, "pull", st, regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0})
			if tc.warning != "" && !strings.Contains(logs.String(), tc.warning) {
				t.Errorf("log has no warning %q:\n%s", tc.warning, logs)
			}
			if tc.warning == "" && strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("unexpected warning:\n%s", logs)
			}
		})
	}

	t.Run("Warm, WithOffline", func(t *testing.T) {
		p.Reset()
		rep, err := remotecache.Warm(t.Context(), fx.tag, s, cacheOptions(t, remotecache.WithOffline())...)
		if err != nil {
			t.Fatalf("Warm: %v", err)
		}
		if !rep.Offline || rep.Fetched.Blobs != 0 || rep.Cached.Blobs != len(fx.want.layers)+2 {
			t.Errorf("report %+v: want offline, nothing fetched, %d blobs cached", rep, len(fx.want.layers)+2)
		}
		if st := p.Stats(); st.Requests != 0 {
			t.Errorf("%d requests reached the proxy, want none", st.Requests)
		}
	})

	t.Run("never warmed, WithOffline", func(t *testing.T) {
		p.Reset()
		_, err := remotecache.Image(never, s, cacheOptions(t, remotecache.WithOffline())...)
		t.Logf("Image: %v", err)
		if !errors.Is(err, remotecache.ErrOffline) {
			t.Errorf("got %v, want an error wrapping remotecache.ErrOffline", err)
		}
		if st := p.Stats(); st.Requests != 0 {
			t.Errorf("%d requests reached the proxy, want none", st.Requests)
		}
	})

	t.Run("never warmed, online", func(t *testing.T) {
		_, err := remotecache.Image(never, s, cacheOptions(t)...)
		t.Logf("Image: %v", err)
		if err == nil {
			t.Fatal("no error")
		}
		// The error must say why: offline, or which registry it could
		// not reach.
		if !errors.Is(err, remotecache.ErrOffline) && !strings.Contains(err.Error(), p.Addr) {
			t.Errorf("got %q, want an error wrapping remotecache.ErrOffline or naming %s", err, p.Addr)
		}
		if !strings.Contains(err.Error(), "never warmed") {
			t.Errorf("got %q, want it to say the tag was never warmed", err)
		}
	})
}
