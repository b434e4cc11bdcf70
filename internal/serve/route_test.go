package serve_test

import (
	"net/http/httptest"
	"testing"

	"github.com/ocibuild/layercache/internal/serve"
	"github.com/ocibuild/layercache/pkg/store"
)

func TestRepository(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		upstream string
		query    string
		path     string
		want     string // "" for an error
	}{
		// One word: docker.io, with library/ added, as docker does.
		{"one word", "", "", "alpine", "index.docker.io/library/alpine"},
		// Two words without a host: docker.io.
		{"two words", "", "", "grafana/grafana", "index.docker.io/grafana/grafana"},
		// A first component with a dot is a registry.
		{"dot", "", "", "ghcr.io/owner/app", "ghcr.io/owner/app"},
		// ... with a colon too.
		{"colon", "", "", "127.0.0.1:5000/app", "127.0.0.1:5000/app"},
		// localhost is a registry.
		{"localhost", "", "", "localhost/app", "localhost/app"},
		// A one-word name with --upstream goes there, without library/.
		{"upstream", "127.0.0.1:5000", "", "app", "127.0.0.1:5000/app"},
		// A path prefix wins over --upstream.
		{"prefix over upstream", "127.0.0.1:5000", "", "quay.io/x/y", "quay.io/x/y"},
		// ns wins over everything, and the whole path is the name.
		{"ns", "127.0.0.1:5000", "ns=docker.io", "library/alpine", "index.docker.io/library/alpine"},
		{"ns with prefix-like name", "", "ns=quay.io", "x.y/z", "quay.io/x.y/z"},
		// Malformed: each an error.
		{"ns slash", "", "ns=a/b", "x", ""},
		{"ns userinfo", "", "ns=u@h.com", "x", ""},
		{"ns space", "", "ns=a%20b", "x", ""},
		// A one-word name is a name even with a dot, as in docker.
		{"one word with a dot", "", "", "ghcr.io", "index.docker.io/library/ghcr.io"},
		{"empty component", "", "", "a//b", ""},
		{"dot dot", "", "", "a/../b", ""},
		{"trailing slash", "", "", "a/", ""},
		{"bad prefix registry", "", "", "a..b/c", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := serve.New(s, serve.Options{Upstream: tc.upstream})
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest("GET", "/v2/x/manifests/v1?"+tc.query, nil)
			got, err := h.Repository(r, tc.path)
			if tc.want == "" {
				if err == nil {
					t.Errorf("%q ?%s = %s, want an error", tc.path, tc.query, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("%q ?%s = %q, %v; want %q", tc.path, tc.query, got, err, tc.want)
			}
		})
	}
}
