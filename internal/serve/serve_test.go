package serve_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/serve"
	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// upstream is ggcr's in-process registry behind a handler that counts
// blob GETs and can hold a blob's body halfway until released.
type upstream struct {
	srv  *httptest.Server
	host string
	reg  http.Handler

	mu       sync.Mutex
	blobGets map[string]int
	hold     map[string]chan struct{} // digest → closed to let the rest through
	held     chan string              // gets the digest of a held body once half is sent
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{
		reg:      registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)),
		blobGets: map[string]int{},
		hold:     map[string]chan struct{}{},
		held:     make(chan string, 16),
	}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	u.host = strings.TrimPrefix(u.srv.URL, "http://")
	return u
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := strings.LastIndex(r.URL.Path, "/blobs/sha256:")
	if r.Method != http.MethodGet || i < 0 {
		u.reg.ServeHTTP(w, r)
		return
	}
	d := r.URL.Path[i+len("/blobs/"):]
	u.mu.Lock()
	u.blobGets[d]++
	release := u.hold[d]
	u.mu.Unlock()
	if release == nil || r.Header.Get("Range") != "" {
		u.reg.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	u.reg.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.Header().Set("Docker-Content-Digest", d)
	w.WriteHeader(rec.Code)
	w.Write(body[:len(body)/2])
	w.(http.Flusher).Flush()
	u.held <- d
	select {
	case <-release:
		w.Write(body[len(body)/2:])
	case <-r.Context().Done():
	}
}

func (u *upstream) gets(h v1.Hash) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.blobGets[h.String()]
}

func (u *upstream) totalGets() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, c := range u.blobGets {
		n += c
	}
	return n
}

// push pushes a random image to the upstream as repoTag.
func (u *upstream) push(t *testing.T, repoTag string, size, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, layers)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(u.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return img
}

// dialTo is a transport that reaches addr whatever host a request names,
// so that an upstream can be named by a host without a port
// (registry.test), as a path prefix must name it.
func dialTo(addr string) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	return t
}

// fast keeps ggcr from retrying with its default backoff.
var fast = remote.WithRetryBackoff(remote.Backoff{Steps: 1})

type fixture struct {
	up    *upstream
	s     *store.Store
	dir   string
	h     *serve.Handler
	srv   *httptest.Server
	host  string // of serve
	log   *bytes.Buffer
	logMu *sync.Mutex
}

// start runs serve over a new store in front of up, which it reaches as
// registry.test (a path prefix) or by its address (?ns=, Upstream).
func start(t *testing.T, up *upstream, o serve.Options) *fixture {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cache")
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.RoundTripper(http.DefaultTransport)
	if up != nil {
		tr = dialTo(up.host)
	}
	o.Insecure = true
	o.Pull = append(o.Pull, remotecache.WithTransport(tr), remotecache.WithRemote(fast))
	o.Remote = append(o.Remote, remote.WithTransport(tr), fast)
	fx := &fixture{up: up, s: s, dir: dir, log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	o.AccessLog = log2slog(fx)
	h, err := serve.New(s, o)
	if err != nil {
		t.Fatal(err)
	}
	fx.h = h
	fx.srv = httptest.NewServer(h)
	fx.host = strings.TrimPrefix(fx.srv.URL, "http://")
	t.Cleanup(func() {
		fx.srv.Close()
		h.Shutdown(context.Background())
	})
	return fx
}

// do sends a request to serve and returns its answer, body read.
func (fx *fixture) do(t *testing.T, method, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return testutil.Do(t, method, fx.srv.URL+path, hdr...)
}

func layerOf(t *testing.T, img v1.Image, i int) (v1.Hash, []byte) {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	h, err := ls[i].Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[i].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return h, b
}

func TestBase(t *testing.T) {
	fx := start(t, nil, serve.Options{})
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		resp, _ := fx.do(t, m, "/v2/")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
			t.Errorf("%s /v2/: %s, API version %q", m, resp.Status, resp.Header.Get("Docker-Distribution-API-Version"))
		}
	}
}

// A ggcr client pulls an image through serve by a path prefix; a second
// pull with the upstream gone comes from the cache, verified.
func TestPullThroughPathPrefix(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "test/img:v1", 4096, 3)
	fx := start(t, up, serve.Options{})

	ref, err := name.ParseReference(fx.host + "/registry.test/test/img:v1")
	if err != nil {
		t.Fatal(err)
	}
	pull := func() {
		t.Helper()
		got, err := remote.Image(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(got); err != nil {
			t.Fatal(err)
		}
		if gd, wd := must(t, got.Digest), must(t, img.Digest); gd != wd {
			t.Errorf("digest %s, want %s", gd, wd)
		}
	}
	pull()
	if n := up.totalGets(); n != 4 {
		t.Errorf("first pull: %d blob GETs upstream, want 4 (config and 3 layers)", n)
	}
	for _, l := range must(t, img.Layers) {
		if _, err := fx.s.Stat(t.Context(), digest.Digest(must(t, l.Digest).String()), store.VerifyFirst); err != nil {
			t.Errorf("layer not cached: %v", err)
		}
	}
	if _, err := fx.s.Resolve(t.Context(), "registry.test/test/img:v1"); err != nil {
		t.Errorf("tag not recorded in index.json: %v", err)
	}

	up.srv.Close()
	pull()
	if !strings.Contains(fx.logText(), "cache=hit") || !strings.Contains(fx.logText(), "cache=miss") {
		t.Errorf("access log has no hit or no miss:\n%s", fx.logText())
	}
}

func must[T any](t *testing.T, f func() (T, error)) T {
	t.Helper()
	v, err := f()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Every way of naming the upstream reaches it.
func TestRouting(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "test/img:v1", 1024, 1)
	want := must(t, img.Digest).String()
	tests := []struct {
		name     string
		upstream string
		path     string
	}{
		// containerd's mirror query parameter, with a port.
		{"ns", "", "/v2/test/img/manifests/v1?ns=" + up.host},
		// A path prefix naming a registry by its host.
		{"path prefix", "", "/v2/registry.test/test/img/manifests/v1"},
		// A path prefix may carry a port too, for clients that can say it.
		{"path prefix with port", "", "/v2/" + up.host + "/test/img/manifests/v1"},
		// Neither: Options.Upstream, which may carry a port.
		{"upstream", up.host, "/v2/test/img/manifests/v1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fx := start(t, up, serve.Options{Upstream: tc.upstream})
			resp, body := fx.do(t, http.MethodGet, tc.path)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s %s", tc.path, resp.Status, body)
			}
			if got := resp.Header.Get("Docker-Content-Digest"); got != want {
				t.Errorf("Docker-Content-Digest %s, want %s", got, want)
			}
			if got := digest.FromBytes(body).String(); got != want {
				t.Errorf("body hashes to %s, want %s", got, want)
			}
			if ct, wt := resp.Header.Get("Content-Type"), string(must(t, img.MediaType)); ct != wt {
				t.Errorf("Content-Type %s, want %s", ct, wt)
			}
			if resp.ContentLength != int64(len(body)) {
				t.Errorf("Content-Length %d, body %d bytes", resp.ContentLength, len(body))
			}
			// By digest, HEAD.
			dpath := strings.Replace(tc.path, "manifests/v1", "manifests/"+want, 1)
			resp, _ = fx.do(t, http.MethodHead, dpath)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want {
				t.Errorf("HEAD %s: %s, digest %s", dpath, resp.Status, resp.Header.Get("Docker-Content-Digest"))
			}
		})
	}
}

func TestBlobRanges(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "test/img:v1", 8192, 2)
	fx := start(t, up, serve.Options{Upstream: up.host})
	h0, b0 := layerOf(t, img, 0)
	h1, b1 := layerOf(t, img, 1)
	size := len(b0)

	// A miss asked for with a Range: 206 with the range, and the whole
	// blob in the cache once the background read ended.
	resp, body := fx.do(t, http.MethodGet, "/v2/test/img/blobs/"+h0.String(), "Range", "bytes=100-199")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, b0[100:200]) {
		t.Fatalf("ranged miss: %s, %d bytes (want 206, bytes 100-199)", resp.Status, len(body))
	}
	if got, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes 100-199/%d", size); got != want {
		t.Errorf("Content-Range %q, want %q", got, want)
	}
	fx.srv.Close()
	if err := fx.h.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.s.Stat(t.Context(), digest.Digest(h0.String()), store.VerifyFirst); err != nil {
		t.Errorf("after a ranged miss the blob is not cached whole: %v", err)
	}

	fx = start(t, up, serve.Options{Upstream: up.host})
	tests := []struct {
		name   string
		h      v1.Hash
		whole  []byte
		rng    string
		status int
		want   []byte
	}{
		// A suffix range.
		{"suffix", h1, b1, "bytes=-10", 206, b1[len(b1)-10:]},
		// An open range from the middle.
		{"open", h1, b1, fmt.Sprintf("bytes=%d-", len(b1)/2), 206, b1[len(b1)/2:]},
		// An end past the blob's is cut at the blob's.
		{"end past the end", h1, b1, "bytes=0-99999999", 206, b1},
		// A start past the end: 416.
		{"start past the end", h1, b1, fmt.Sprintf("bytes=%d-", len(b1)), 416, nil},
		// Several ranges are answered with the whole blob.
		{"several", h1, b1, "bytes=0-1,5-6", 200, b1},
		// A Range that does not parse is ignored.
		{"garbage", h1, b1, "bytes=x-y", 200, b1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := fx.do(t, http.MethodGet, "/v2/test/img/blobs/"+tc.h.String(), "Range", tc.rng)
			if resp.StatusCode != tc.status {
				t.Fatalf("Range %s: %s, want %d", tc.rng, resp.Status, tc.status)
			}
			if tc.status == 416 {
				if code := testutil.SpecErrorCode(body); code == "" {
					t.Errorf("416 without a spec error code: %s", body)
				}
				return
			}
			if !bytes.Equal(body, tc.want) {
				t.Errorf("Range %s: %d bytes, not the ones wanted (%d)", tc.rng, len(body), len(tc.want))
			}
		})
	}
}

// A cached blob is sent from its file (sendfile, past the first 512
// bytes), whole or from a range's start, and the access log counts the
// bytes sent.
func TestBlobRangesOfHit(t *testing.T) {
	fx := start(t, nil, serve.Options{Offline: true})
	data := make([]byte, 1<<20+777)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	d := digest.FromBytes(data)
	if err := fx.s.PutVerified(t.Context(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	size := len(data)
	tests := []struct {
		name   string
		rng    string
		status int
		want   []byte
	}{
		// No Range: the whole blob.
		{"whole", "", 200, data},
		// A range to the end, from past the first 512 bytes: sendfile
		// from the middle of the file.
		{"open", fmt.Sprintf("bytes=%d-", size/2+3), 206, data[size/2+3:]},
		// A suffix range shorter than 512 bytes.
		{"short suffix", "bytes=-100", 206, data[size-100:]},
		// A range inside the blob: the copy stops at its end.
		{"inside", "bytes=1000-300999", 206, data[1000:301000]},
		// One byte.
		{"first byte", "bytes=0-0", 206, data[:1]},
		// An end past the blob's is cut at the blob's.
		{"end past the end", "bytes=7-99999999", 206, data[7:]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.rng != "" {
				hdr = []string{"Range", tc.rng}
			}
			resp, body := fx.do(t, http.MethodGet, "/v2/test/img/blobs/"+d.String(), hdr...)
			if resp.StatusCode != tc.status || !bytes.Equal(body, tc.want) {
				t.Fatalf("Range %q: %s, %d bytes; want %d and %d bytes of the blob", tc.rng, resp.Status, len(body), tc.status, len(tc.want))
			}
			if resp.ContentLength != int64(len(tc.want)) {
				t.Errorf("Content-Length %d, want %d", resp.ContentLength, len(tc.want))
			}
			if want := fmt.Sprintf("bytes=%d cache=hit", len(tc.want)); !strings.Contains(fx.logText(), want) {
				t.Errorf("access log has no %q:\n%s", want, fx.logText())
			}
		})
	}
}

// A client that goes away mid-blob leaves the download going on into the
// cache; the blob is committed whole.
func TestClientGoneMidBlob(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "test/img:v1", 1<<20, 1)
	h, b := layerOf(t, img, 0)
	release := make(chan struct{})
	up.mu.Lock()
	up.hold[h.String()] = release
	up.mu.Unlock()
	fx := start(t, up, serve.Options{Upstream: up.host})

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fx.srv.URL+"/v2/test/img/blobs/"+h.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	<-up.held
	cancel() // the client goes away with half the blob sent upstream
	resp.Body.Close()
	close(release)

	// Wait for the request's handler, then for the background read.
	fx.srv.Close()
	if err := fx.h.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, err := fx.s.Get(t.Context(), digest.Digest(h.String()))
	if err != nil {
		t.Fatalf("blob not cached after the client went away: %v", err)
	}
	if !bytes.Equal(got, b) {
		t.Errorf("cached blob differs")
	}
	if n := up.gets(h); n != 1 {
		t.Errorf("%d upstream GETs, want 1", n)
	}
	assertNoLitter(t, fx.dir)
}

// A download that outlived its client and is cut by Shutdown is not
// committed.
func TestShutdownCancelsOrphanedDownload(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "test/img:v1", 1<<20, 1)
	h, _ := layerOf(t, img, 0)
	up.mu.Lock()
	up.hold[h.String()] = make(chan struct{}) // never released
	up.mu.Unlock()
	fx := start(t, up, serve.Options{Upstream: up.host})

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fx.srv.URL+"/v2/test/img/blobs/"+h.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-up.held
	cancel()
	resp.Body.Close()

	sctx, scancel := context.WithCancel(t.Context())
	scancel() // no grace: cancel what is left at once
	fx.h.Shutdown(sctx)
	fx.srv.Close()
	if _, err := fx.s.Stat(t.Context(), digest.Digest(h.String())); err == nil {
		t.Errorf("a download cut by Shutdown was committed")
	}
}

func assertNoLitter(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, layout.IngestDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("ingest/ holds %s", e.Name())
		}
	}
}

// Push, delete and upload endpoints answer UNSUPPORTED.
func TestWritesUnsupported(t *testing.T) {
	fx := start(t, nil, serve.Options{Offline: true})
	for _, c := range []struct{ method, path string }{
		{http.MethodPut, "/v2/test/img/manifests/v1"},
		{http.MethodDelete, "/v2/test/img/manifests/sha256:" + strings.Repeat("0", 64)},
		{http.MethodPost, "/v2/test/img/blobs/uploads/"},
		{http.MethodPatch, "/v2/test/img/blobs/uploads/abc"},
		{http.MethodPut, "/v2/test/img/blobs/uploads/abc?digest=sha256:" + strings.Repeat("0", 64)},
		{http.MethodDelete, "/v2/test/img/blobs/sha256:" + strings.Repeat("0", 64)},
		{http.MethodGet, "/v2/test/img/blobs/uploads/abc"},
	} {
		resp, body := fx.do(t, c.method, c.path)
		if resp.StatusCode != http.StatusMethodNotAllowed || testutil.SpecErrorCode(body) != "UNSUPPORTED" {
			t.Errorf("%s %s: %s %s, want 405 UNSUPPORTED", c.method, c.path, resp.Status, body)
		}
	}
}

// Hostile requests get a spec error code and touch nothing.
func TestHostileRequests(t *testing.T) {
	up := newUpstream(t)
	up.push(t, "test/img:v1", 1024, 1)
	fx := start(t, up, serve.Options{Upstream: up.host})
	zero := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		name   string
		path   string
		status int
		code   string
	}{
		// A name that climbs out.
		{"dot dot in name", "/v2/test/../../etc/manifests/v1", 400, "NAME_INVALID"},
		// Encoded, the same.
		{"encoded dot dot", "/v2/test/%2e%2e/x/blobs/" + zero, 400, "NAME_INVALID"},
		// Uppercase names are not names.
		{"uppercase", "/v2/Test/img/manifests/v1", 400, "NAME_INVALID"},
		// A digest with a path in it.
		{"digest path", "/v2/test/img/blobs/sha256:..%2f..%2fetc%2fpasswd", 400, "DIGEST_INVALID"},
		// A digest of an algorithm the cache does not keep.
		{"md5", "/v2/test/img/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"},
		// Uppercase hex.
		{"uppercase hex", "/v2/test/img/blobs/sha256:" + strings.Repeat("A", 64), 400, "DIGEST_INVALID"},
		// A manifest digest that does not parse.
		{"manifest digest", "/v2/test/img/manifests/sha256:abc", 400, "DIGEST_INVALID"},
		// A malformed ns.
		{"ns with a path", "/v2/test/img/manifests/v1?ns=evil.com/../x", 400, "NAME_INVALID"},
		{"ns empty", "/v2/test/img/manifests/v1?ns=", 400, "NAME_INVALID"},
		{"ns twice", "/v2/test/img/manifests/v1?ns=a.com&ns=b.com", 400, "NAME_INVALID"},
		// A tag that is no tag.
		{"tag", "/v2/test/img/manifests/-x", 400, "MANIFEST_INVALID"},
		// A blob the upstream does not have.
		{"unknown blob", "/v2/test/img/blobs/" + zero, 404, "BLOB_UNKNOWN"},
		// A manifest the upstream does not have.
		{"unknown tag", "/v2/test/img/manifests/nope", 404, "MANIFEST_UNKNOWN"},
		// Not the API.
		{"elsewhere", "/etc/passwd", 404, "UNSUPPORTED"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := fx.do(t, http.MethodGet, tc.path)
			if resp.StatusCode != tc.status || testutil.SpecErrorCode(body) != tc.code {
				t.Errorf("GET %s: %s %s, want %d %s", tc.path, resp.Status, body, tc.status, tc.code)
			}
		})
	}
	blobs, err := os.ReadDir(filepath.Join(fx.dir, layout.BlobsDir, "sha256"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(blobs) != 0 {
		t.Errorf("hostile requests stored %d blobs", len(blobs))
	}
	if refs, _ := fx.s.Refs(t.Context()); len(refs) != 0 {
		t.Errorf("hostile requests recorded refs %v", refs)
	}
}

func TestTagsList(t *testing.T) {
	up := newUpstream(t)
	for _, tag := range []string{"a", "b", "c", "d"} {
		up.push(t, "test/img:"+tag, 256, 1)
	}
	fx := start(t, up, serve.Options{Upstream: up.host})
	resp, body := fx.do(t, http.MethodGet, "/v2/test/img/tags/list?n=2&last=a")
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s", resp.Status, body)
	}
	var got struct {
		Name string
		Tags []string
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got.Tags, ",") != "b,c" || got.Name != "test/img" {
		t.Errorf("tags/list?n=2&last=a = %+v, want test/img [b c]", got)
	}
	if !strings.Contains(resp.Header.Get("Link"), "last=c") {
		t.Errorf("Link %q, want the next page after c", resp.Header.Get("Link"))
	}
}

func TestOfflineMissIsUnknown(t *testing.T) {
	fx := start(t, nil, serve.Options{Offline: true})
	zero := "sha256:" + strings.Repeat("0", 64)
	for path, code := range map[string]string{
		"/v2/test/img/blobs/" + zero:     "BLOB_UNKNOWN",
		"/v2/test/img/manifests/v1":      "MANIFEST_UNKNOWN",
		"/v2/test/img/manifests/" + zero: "MANIFEST_UNKNOWN",
	} {
		resp, body := fx.do(t, http.MethodGet, path)
		if resp.StatusCode != 404 || testutil.SpecErrorCode(body) != code {
			t.Errorf("offline GET %s: %s %s, want 404 %s", path, resp.Status, body, code)
		}
	}
}

func TestUnreachableIsBadGateway(t *testing.T) {
	up := newUpstream(t)
	fx := start(t, up, serve.Options{Upstream: up.host})
	up.srv.Close()
	for _, path := range []string{"/v2/test/img/manifests/v1", "/v2/test/img/blobs/sha256:" + strings.Repeat("0", 64)} {
		resp, body := fx.do(t, http.MethodGet, path)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "cannot be reached") {
			t.Errorf("GET %s with the upstream down: %s %s, want 502 saying it cannot be reached", path, resp.Status, body)
		}
	}
}

// lockedWriter is a writer safe for the handler's goroutines.
type lockedWriter struct{ fx *fixture }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.fx.logMu.Lock()
	defer w.fx.logMu.Unlock()
	return w.fx.log.Write(b)
}

func log2slog(fx *fixture) *slog.Logger {
	return slog.New(slog.NewTextHandler(lockedWriter{fx}, nil))
}

func (fx *fixture) logText() string {
	fx.logMu.Lock()
	defer fx.logMu.Unlock()
	return fx.log.String()
}

// Clients asking for the same cold blob at once share one download.
func TestConcurrentMissesDownloadOnce(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "test/img:v1", 1<<20, 1)
	h, b := layerOf(t, img, 0)
	fx := start(t, up, serve.Options{Upstream: up.host})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			resp, err := http.Get(fx.srv.URL + "/v2/test/img/blobs/" + h.String())
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err == nil && !bytes.Equal(got, b) {
				err = fmt.Errorf("%s: %d bytes that differ from the blob", resp.Status, len(got))
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := up.gets(h); n != 1 {
		t.Errorf("%d upstream GETs of the blob, want 1", n)
	}
}

// The referrers API is passed through to the upstream, with its
// artifactType filter.
func TestReferrers(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "test/img:v1", 256, 1)
	subject, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := random.Image(128, 1)
	if err != nil {
		t.Fatal(err)
	}
	sig = mutate.ConfigMediaType(mutate.MediaType(sig, types.OCIManifestSchema1), "application/vnd.example.sig")
	sig = mutate.Subject(sig, *subject).(v1.Image)
	ref, err := name.ParseReference(up.host + "/test/img:sig")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, sig); err != nil {
		t.Fatal(err)
	}
	fx := start(t, up, serve.Options{Upstream: up.host})
	for _, tc := range []struct {
		query string
		want  int
	}{{"", 1}, {"?artifactType=application/vnd.example.sig", 1}, {"?artifactType=application/other", 0}} {
		resp, body := fx.do(t, http.MethodGet, "/v2/test/img/referrers/"+subject.Digest.String()+tc.query)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != string(types.OCIImageIndex) {
			t.Fatalf("referrers%s: %s %s %s", tc.query, resp.Status, resp.Header.Get("Content-Type"), body)
		}
		im, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if len(im.Manifests) != tc.want {
			t.Errorf("referrers%s: %d manifests, want %d", tc.query, len(im.Manifests), tc.want)
		}
	}
}

// Offline, tags/list lists the tags index.json records for the repository.
func TestTagsListOffline(t *testing.T) {
	up := newUpstream(t)
	up.push(t, "test/img:v1", 256, 1)
	up.push(t, "test/img:v2", 256, 1)
	fx := start(t, up, serve.Options{Upstream: up.host})
	for _, tag := range []string{"v1", "v2"} {
		if resp, body := fx.do(t, http.MethodGet, "/v2/test/img/manifests/"+tag); resp.StatusCode != 200 {
			t.Fatalf("%s: %s %s", tag, resp.Status, body)
		}
	}
	up.srv.Close()
	off, err := serve.New(fx.s, serve.Options{Upstream: up.host, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	off.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v2/test/img/tags/list", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"tags":["v1","v2"]`) {
		t.Errorf("offline tags/list: %d %s, want v1 and v2", rec.Code, rec.Body)
	}
}

// A sha512 blob the store holds is served like any other.
func TestSHA512Blob(t *testing.T) {
	fx := start(t, nil, serve.Options{Offline: true})
	data := []byte("a blob named by its sha512 digest")
	d := digest.SHA512.FromBytes(data)
	if err := fx.s.PutVerified(t.Context(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	resp, body := fx.do(t, http.MethodGet, "/v2/test/img/blobs/"+d.String())
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Errorf("GET sha512 blob: %s %q", resp.Status, body)
	}
}

// A HEAD of a blob not cached answers with its size, and leaves the blob
// cached: its download runs on in the background.
func TestHeadMissCachesBlob(t *testing.T) {
	up := newUpstream(t)
	img := up.push(t, "test/img:v1", 4096, 1)
	h, b := layerOf(t, img, 0)
	fx := start(t, up, serve.Options{Upstream: up.host})
	resp, body := fx.do(t, http.MethodHead, "/v2/test/img/blobs/"+h.String())
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(b)) || len(body) != 0 {
		t.Fatalf("HEAD: %s, Content-Length %d, %d body bytes; want 200, %d, none", resp.Status, resp.ContentLength, len(body), len(b))
	}
	fx.srv.Close()
	if err := fx.h.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.s.Stat(t.Context(), digest.Digest(h.String()), store.VerifyFirst); err != nil {
		t.Errorf("after a HEAD, the blob is not cached: %v", err)
	}
}
