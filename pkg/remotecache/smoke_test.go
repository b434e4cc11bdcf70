package remotecache_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

func TestSmoke(t *testing.T) {
	var blobGets atomic.Int64
	reg := registry.New()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" && strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ref, _ := name.ParseReference(u.Host + "/test/img:v1")
	img, _ := random.Image(1<<20, 3)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ci, err := remotecache.Image(ref, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(ci); err != nil {
		t.Fatal(err)
	}
	t.Log("cold blob GETs", blobGets.Load())
	blobGets.Store(0)
	ci, err = remotecache.Image(ref, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(ci); err != nil {
		t.Fatal(err)
	}
	if n := blobGets.Load(); n != 0 {
		t.Fatalf("warm blob GETs %d", n)
	}
	rep, err := remotecache.Warm(context.Background(), ref, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	s2, _ := store.Open(t.TempDir())
	tr := remotecache.Transport(s2, nil)
	for i := 0; i < 2; i++ {
		blobGets.Store(0)
		ri, err := remote.Image(ref, remote.WithTransport(tr))
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(ri); err != nil {
			t.Fatal(err)
		}
		ls, _ := ri.Layers()
		for _, l := range ls {
			rc, _ := l.Compressed()
			io.Copy(io.Discard, rc)
			rc.Close()
		}
		t.Log("transport pass", i, "blob GETs", blobGets.Load())
	}
}
