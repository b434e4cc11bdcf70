// Package testregistry serves ggcr's in-memory registry (pkg/registry) on
// 127.0.0.1 for tests and examples, as crane's own tests do. A test that
// counts requests or injects faults wraps Handler in a handler of its own
// and serves that. It is for tests and examples only.
package testregistry

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Handler returns a new, empty in-memory registry, with its log of every
// request discarded.
func Handler() http.Handler {
	return registry.New(registry.Logger(log.New(io.Discard, "", 0)))
}

// Serve serves h, or a new Handler if h is nil, over plain HTTP on a
// loopback port. The caller closes the server.
func Serve(h http.Handler) *httptest.Server {
	if h == nil {
		h = Handler()
	}
	return httptest.NewServer(h)
}

// Start is Serve for a test: the server is closed when the test ends.
func Start(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := Serve(h)
	t.Cleanup(srv.Close)
	return srv
}

// Host returns the host:port of srv, as image references name it.
func Host(srv *httptest.Server) string {
	return strings.TrimPrefix(srv.URL, "http://")
}
