package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	ggcrlayout "github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/store"
)

// End-to-end tests of `layercache serve` with real clients (skopeo,
// crane, plain HTTP) and a CNCF distribution registry upstream behind the
// counting fault proxy.
//
// Which upstream a request is for. skopeo and crane parse image
// references, and a docker reference's path components cannot hold a
// colon, so "SERVE/127.0.0.1:5000/repo" is not a reference they accept:
// an upstream with a port is given to serve by --upstream, and the
// clients name plain repositories. The path-prefix form with a port is
// exercised with plain HTTP (GET /v2/127.0.0.1:PORT/repo/...), where the
// path is just a path, and skopeo uses the path prefix with a dotted
// registry name that serve maps to the proxy with --mirror. The ns query
// parameter (containerd's form) is exercised with plain HTTP too.

// serveFixture is an upstream registry behind a counting proxy, with one
// image pushed to it.
type serveFixture struct {
	reg *regtest.Registry
	p   *regtest.Proxy
	fx  *fixture
}

func newServeFixture(t *testing.T, repoTag string, sizes ...int64) *serveFixture {
	t.Helper()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	return &serveFixture{reg: reg, p: p, fx: pushImage(t, reg, p, repoTag, sizes...)}
}

// assertLayoutImage reads the image that a client wrote to the OCI image
// layout dir (its only manifest) and checks it is fx, byte for byte.
func assertLayoutImage(t *testing.T, what, dir string, fx *fixture) {
	t.Helper()
	ii, err := ggcrlayout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("%s: reading the layout %s: %v", what, dir, err)
	}
	m, err := ii.IndexManifest()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("%s: the layout's index.json names %d manifests, want 1", what, len(m.Manifests))
	}
	if got := m.Manifests[0].Digest; got != fx.want.digest {
		t.Errorf("%s: the layout holds manifest %s, want the upstream's %s", what, got, fx.want.digest)
	}
	img, err := ii.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	assertPulled(t, what, readImage(t, img), fx.want)
}

// TestServe_Skopeo copies an image through serve with Debian's skopeo
// into an OCI layout, twice: the copy is the upstream's image, digest for
// digest, and the second copy makes no blob GET upstream.
func TestServe_Skopeo(t *testing.T) {
	t.Parallel()
	skopeo := skopeoBin(t)
	sf := newServeFixture(t, "skopeo/img:v1", 256<<10, 64<<10)
	cache := t.TempDir() + "/cache"
	srv := startServe(t, "serve", cache, "--upstream", sf.p.Addr, "--insecure")
	src := "docker://" + srv.Addr + "/skopeo/img:v1"
	copyTo := func(t *testing.T, src string) string {
		t.Helper()
		dir := t.TempDir()
		// oci:DIR:REF; DIR has no colon. --preserve-digests: a copy that
		// would have to convert the manifest fails instead.
		runTool(t, skopeo, "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", src, "oci:"+dir+":v1")
		return dir
	}

	assertLayoutImage(t, "first skopeo copy", copyTo(t, src), sf.fx)
	st := sf.p.Stats()
	assertStats(t, "first skopeo copy", st, regtest.Stats{BlobGets: int64(1 + len(sf.fx.want.layers)), BlobBytes: sf.fx.blobBytes, ManifestGets: -1, BlobUploads: 0, Mounts: 0})

	sf.p.Reset()
	assertLayoutImage(t, "second skopeo copy", copyTo(t, src), sf.fx)
	assertStats(t, "second skopeo copy", sf.p.Stats(), regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: -1, BlobUploads: 0, Mounts: 0})

	out := runTool(t, skopeo, "inspect", "--raw", "--tls-verify=false", src)
	if !bytes.Equal(out, sf.fx.want.manifest) {
		t.Errorf("skopeo inspect --raw through serve: %d bytes that differ from the upstream's manifest (%d bytes)", len(out), len(sf.fx.want.manifest))
	}
}

// TestServe_SkopeoPathPrefix copies by digest through the path-prefix
// form, docker://SERVE/<registry>/<repo>@<digest>. The registry is a
// dotted name (a name with a port cannot be a path component of a
// reference) that serve maps to the proxy with --mirror; by digest, the
// mirror answers everything and the name itself is never asked.
func TestServe_SkopeoPathPrefix(t *testing.T) {
	t.Parallel()
	skopeo := skopeoBin(t)
	sf := newServeFixture(t, "prefix/img:v1", 128<<10)
	const registry = "registry.layercache.test"
	srv := startServe(t, "serve", t.TempDir()+"/cache", "--insecure", "--mirror", registry+"="+sf.p.URL)
	dir := t.TempDir()
	src := "docker://" + srv.Addr + "/" + registry + "/prefix/img@" + sf.fx.want.digest.String()
	runTool(t, skopeo, "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", src, "oci:"+dir+":v1")
	assertLayoutImage(t, "skopeo copy by path prefix", dir, sf.fx)
	assertStats(t, "skopeo copy by path prefix", sf.p.Stats(), regtest.Stats{BlobGets: int64(1 + len(sf.fx.want.layers)), BlobBytes: sf.fx.blobBytes, ManifestGets: -1, BlobUploads: 0, Mounts: 0})
}

// TestServe_Crane pulls with crane, built from ggcr's cmd/crane at the
// version the library pins, through serve: crane digest, crane manifest
// and crane pull into an OCI layout all give the upstream's bytes.
func TestServe_Crane(t *testing.T) {
	t.Parallel()
	crane := toolBin(t, regtest.Crane)
	sf := newServeFixture(t, "crane/img:v1", 192<<10, 32<<10)
	srv := startServe(t, "serve", t.TempDir()+"/cache", "--upstream", sf.p.Addr, "--insecure")
	ref := srv.Addr + "/crane/img:v1"

	if got := strings.TrimSpace(string(runTool(t, crane, "digest", "--insecure", ref))); got != sf.fx.want.digest.String() {
		t.Errorf("crane digest %s = %s, want %s", ref, got, sf.fx.want.digest)
	}
	if got := runTool(t, crane, "manifest", "--insecure", ref); !bytes.Equal(got, sf.fx.want.manifest) {
		t.Errorf("crane manifest %s: %d bytes that differ from the upstream's manifest (%d bytes)", ref, len(got), len(sf.fx.want.manifest))
	}
	dir := t.TempDir() + "/layout"
	runTool(t, crane, "pull", "--insecure", "--format", "oci", ref, dir)
	assertLayoutImage(t, "crane pull", dir, sf.fx)
	assertStats(t, "crane pull", sf.p.Stats(), regtest.Stats{BlobGets: int64(1 + len(sf.fx.want.layers)), BlobBytes: sf.fx.blobBytes, ManifestGets: -1, BlobUploads: 0, Mounts: 0})

	// By digest, a second time: all from the cache.
	sf.p.Reset()
	dir2 := t.TempDir() + "/layout"
	runTool(t, crane, "pull", "--insecure", "--format", "oci", srv.Addr+"/crane/img@"+sf.fx.want.digest.String(), dir2)
	assertLayoutImage(t, "crane pull by digest", dir2, sf.fx)
	assertStats(t, "crane pull by digest", sf.p.Stats(), regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0})
}

// TestClients_Registry runs the client commands of the tests above
// against the distribution registry directly: proof that skopeo, crane
// and the layout checks work on their own, whatever serve does.
func TestClients_Registry(t *testing.T) {
	t.Parallel()
	sf := newServeFixture(t, "clients/img:v1", 64<<10)
	ref := sf.reg.Addr + "/clients/img:v1"
	t.Run("skopeo", func(t *testing.T) {
		skopeo := skopeoBin(t)
		dir := t.TempDir()
		runTool(t, skopeo, "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", "docker://"+ref, "oci:"+dir+":v1")
		assertLayoutImage(t, "skopeo copy from the registry", dir, sf.fx)
	})
	t.Run("crane", func(t *testing.T) {
		crane := toolBin(t, regtest.Crane)
		if got := strings.TrimSpace(string(runTool(t, crane, "digest", "--insecure", ref))); got != sf.fx.want.digest.String() {
			t.Errorf("crane digest = %s, want %s", got, sf.fx.want.digest)
		}
		dir := t.TempDir() + "/layout"
		runTool(t, crane, "pull", "--insecure", "--format", "oci", ref, dir)
		assertLayoutImage(t, "crane pull from the registry", dir, sf.fx)
	})
}

// blobURL is the URL of blob d of repo at base ("http://host:port").
func blobURL(base, repo string, d digest.Digest) string {
	return base + "/v2/" + repo + "/blobs/" + d.String()
}

// getBlob GETs url and returns the digest and length of the body,
// failing t unless the answer is 200 and whole.
func getBlob(t *testing.T, c *http.Client, url string) (digest.Digest, int64) {
	t.Helper()
	got, n, err := tryGetBlob(t.Context(), c, url)
	if err != nil {
		t.Fatal(err)
	}
	return got, n
}

func tryGetBlob(ctx context.Context, c *http.Client, url string) (digest.Digest, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", n, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err != nil {
		return "", n, fmt.Errorf("GET %s: body after %d bytes: %v", url, n, err)
	}
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil))), n, nil
}

// layerOf returns the digest and size of fx's i-th layer.
func layerOf(fx *fixture, i int) (digest.Digest, int64) {
	return toDigest(fx.want.layers[i].digest), fx.want.layers[i].size
}

// TestServe_Routing checks the three ways a request names its upstream,
// with plain HTTP: --upstream for a plain name, containerd's ns query
// parameter, and a path prefix whose first component holds a port.
func TestServe_Routing(t *testing.T) {
	t.Parallel()
	sf := newServeFixture(t, "route/img:v1", 32<<10)
	c := httpClient(t)
	d, size := layerOf(sf.fx, 0)
	// check GETs the manifest and a layer of repo (a name as the client
	// writes it, which may start with the registry) with the query q.
	check := func(t *testing.T, base, repo, q string) {
		t.Helper()
		sf.p.Reset()
		u := base + "/v2/" + repo + "/manifests/v1" + q
		resp, err := c.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s, %v: %.300q", u, resp.Status, err, body)
		}
		if !bytes.Equal(body, sf.fx.want.manifest) {
			t.Errorf("GET %s: %d bytes that are not the upstream's manifest", u, len(body))
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != sf.fx.want.digest.String() {
			t.Errorf("GET %s: Docker-Content-Digest %q, want %s", u, got, sf.fx.want.digest)
		}
		if got, n := getBlob(t, c, blobURL(base, repo, d)+q); got != d || n != size {
			t.Errorf("blob of %s%s: %s (%d bytes), want %s (%d bytes)", repo, q, got, n, d, size)
		}
		assertStats(t, "GET "+u, sf.p.Stats(), regtest.Stats{BlobGets: 1, BlobBytes: size, ManifestGets: -1, BlobUploads: 0, Mounts: 0})
	}
	t.Run("upstream flag", func(t *testing.T) {
		srv := startServe(t, "serve", t.TempDir()+"/cache", "--upstream", sf.p.Addr, "--insecure")
		check(t, srv.URL(), "route/img", "")
	})
	t.Run("ns query", func(t *testing.T) {
		srv := startServe(t, "serve", t.TempDir()+"/cache", "--insecure")
		check(t, srv.URL(), "route/img", "?ns="+sf.p.Addr)
	})
	t.Run("path prefix with a port", func(t *testing.T) {
		srv := startServe(t, "serve", t.TempDir()+"/cache", "--insecure")
		check(t, srv.URL(), sf.p.Addr+"/route/img", "")
	})
}

// TestServe_CorruptedBlobHeals flips a byte of a cached layer, then asks
// serve for it: the client gets the right bytes, the upstream serves the
// blob again, and the cache holds it whole afterwards.
func TestServe_CorruptedBlobHeals(t *testing.T) {
	t.Parallel()
	sf := newServeFixture(t, "heal/img:v1", 512<<10)
	cache := t.TempDir() + "/cache"
	srv := startServe(t, "serve", cache, "--upstream", sf.p.Addr, "--insecure")
	c := httpClient(t)
	d, size := layerOf(sf.fx, 0)
	if got, n := getBlob(t, c, blobURL(srv.URL(), "heal/img", d)); got != d || n != size {
		t.Fatalf("cold GET: %s (%d bytes), want %s (%d bytes)", got, n, d, size)
	}
	s, err := store.Open(cache)
	if err != nil {
		t.Fatal(err)
	}
	assertHolds(t, s, d)
	path, err := s.Layout().BlobPath(d)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, path, size/2)

	sf.p.Reset()
	if got, n := getBlob(t, c, blobURL(srv.URL(), "heal/img", d)); got != d || n != size {
		t.Errorf("GET of the corrupted blob: %s (%d bytes), want %s (%d bytes)", got, n, d, size)
	}
	assertStats(t, "GET of the corrupted blob", sf.p.Stats(), regtest.Stats{BlobGets: 1, BlobBytes: size, ManifestGets: -1, BlobUploads: 0, Mounts: 0})
	assertHolds(t, s, d)
	// And again: a hit now.
	sf.p.Reset()
	if got, _ := getBlob(t, c, blobURL(srv.URL(), "heal/img", d)); got != d {
		t.Errorf("GET after healing: %s, want %s", got, d)
	}
	assertStats(t, "GET after healing", sf.p.Stats(), regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: -1, BlobUploads: 0, Mounts: 0})
	assertStoreSound(t, s)
}

// flipByte inverts the byte at off of the blob file at path.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[off] ^= 0xff
	writeBlobFile(t, path, data)
}

// writeBlobFile replaces the file at path with data, read-only as the
// store leaves its blobs.
func writeBlobFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".flip"
	if err := os.WriteFile(tmp, data, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestServe_ConcurrentColdBlobOnce sends 8 clients at once for one cold
// blob, half to each of two serve processes on one cache: the upstream
// serves the blob once. The upstream's answer is held until every client
// has sent its request, so that they all overlap the one download.
func TestServe_ConcurrentColdBlobOnce(t *testing.T) {
	t.Parallel()
	sf := newServeFixture(t, "once/img:v1", 4<<20)
	cache := t.TempDir() + "/cache"
	srvs := []*server{
		startServe(t, "serve-a", cache, "--upstream", sf.p.Addr, "--insecure"),
		startServe(t, "serve-b", cache, "--upstream", sf.p.Addr, "--insecure"),
	}
	d, size := layerOf(sf.fx, 0)
	gate := regtest.NewGate()
	hold := sf.p.Inject(regtest.HoldUntil(gate).Only(regtest.IsBlobGet).Only(regtest.HasDigest(d.String())))
	defer gate.Open()
	sf.p.Reset()

	const clients = 8
	var wrote sync.WaitGroup
	wrote.Add(clients)
	type result struct {
		d   digest.Digest
		n   int64
		err error
	}
	results := make(chan result, clients)
	for i := range clients {
		go func() {
			c := httpClient(t)
			var once sync.Once
			ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
				WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(wrote.Done) },
			})
			got, n, err := tryGetBlob(ctx, c, blobURL(srvs[i%2].URL(), "once/img", d))
			once.Do(wrote.Done) // also when the request failed before it was written
			results <- result{got, n, err}
		}()
	}
	wrote.Wait()
	// Every client has sent its request. The upstream blob GET that a
	// serve process made is held; the others wait behind its lock.
	ctx, cancel := context.WithTimeout(t.Context(), serveTimeout)
	defer cancel()
	if err := hold.Await(ctx, 1); err != nil {
		t.Fatalf("no blob GET reached the upstream: %v", err)
	}
	gate.Open()
	for range clients {
		r := <-results
		if r.err != nil {
			t.Errorf("client: %v", r.err)
		} else if r.d != d || r.n != size {
			t.Errorf("client got %s (%d bytes), want %s (%d bytes)", r.d, r.n, d, size)
		}
	}
	assertStats(t, "8 clients through 2 serve processes", sf.p.Stats(), regtest.Stats{BlobGets: 1, BlobBytes: size, ManifestGets: -1, BlobUploads: 0, Mounts: 0})
	// Each process answered its half: the access log has a line per
	// request, written once the response is done.
	served := regexp.MustCompile(`method=GET path=/v2/once/img/blobs/` + regexp.QuoteMeta(d.String()) + ` status=200 `)
	for _, srv := range srvs {
		if _, err := srv.log.waitN(ctx, srv.done, served, clients/2); err != nil {
			t.Errorf("%s: access log: %v", srv.name, err)
		}
	}
	s, err := store.Open(cache)
	if err != nil {
		t.Fatal(err)
	}
	assertHolds(t, s, d)
	assertStoreSound(t, s)
}

// TestServe_ClientCutMidBlob reads half of a cold blob through serve and
// closes the connection, then stops serve with SIGTERM (it must exit 0)
// and starts it again: `layercache verify` finds the cache sound, nothing
// is at the blob's name unless it is whole, and a new GET returns the
// right bytes.
func TestServe_ClientCutMidBlob(t *testing.T) {
	t.Parallel()
	sf := newServeFixture(t, "cut/img:v1", 8<<20)
	cache := t.TempDir() + "/cache"
	srv := startServe(t, "serve", cache, "--upstream", sf.p.Addr, "--insecure")
	d, size := layerOf(sf.fx, 0)

	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(blobURL(srv.URL(), "cut/img", d))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("GET: %s", resp.Status)
	}
	if n, err := io.CopyN(io.Discard, resp.Body, size/2); err != nil {
		t.Fatalf("reading half of the blob: %v after %d bytes", err, n)
	}
	resp.Body.Close() // unread body, no keep-alive: the connection closes
	srv.Stop()        // SIGTERM, exit 0
	if t.Failed() {
		t.FailNow()
	}

	r := newRunner(t, "verify")
	out, err := tryTool(t, r.cli, "--cache-dir", cache, "--json", "verify")
	if err != nil {
		t.Errorf("layercache verify after the cut: %v", err)
	}
	var rep struct {
		Corrupted []json.RawMessage `json:"corrupted"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Errorf("layercache verify --json: %v: %q", err, out)
	} else if len(rep.Corrupted) != 0 {
		t.Errorf("layercache verify found corrupted blobs: %s", out)
	}
	s, err := store.Open(cache)
	if err != nil {
		t.Fatal(err)
	}
	path, err := s.Layout().BlobPath(d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err == nil {
		assertHolds(t, s, d) // the download went on to the end: whole
	} else if !os.IsNotExist(err) {
		t.Fatal(err)
	}
	assertIngestClean(t, s)

	srv2 := startServe(t, "serve-again", cache, "--upstream", sf.p.Addr, "--insecure")
	if got, n := getBlob(t, httpClient(t), blobURL(srv2.URL(), "cut/img", d)); got != d || n != size {
		t.Errorf("GET after the restart: %s (%d bytes), want %s (%d bytes)", got, n, d, size)
	}
	assertHolds(t, s, d)
	assertIngestClean(t, s)
}

// TestServe_Hostile sends requests with path tricks in names, digests and
// references, a header over 1 MiB, a Range past the blob's end and
// malformed ns parameters: each gets a 4xx with a distribution-spec error
// code, and nothing appears outside the cache directory.
func TestServe_Hostile(t *testing.T) {
	t.Parallel()
	sf := newServeFixture(t, "hostile/img:v1", 16<<10)
	base := t.TempDir()
	cache := filepath.Join(base, "cache")
	// A folder beside the cache that the tricks aim at.
	outside := filepath.Join(base, "outside")
	check(t, os.Mkdir(outside, 0o755))
	srv := startServe(t, "serve", cache, "--upstream", sf.p.Addr, "--insecure")
	d, size := layerOf(sf.fx, 0)
	// Cache the blob, so that the Range request is a hit and a miss alike.
	getBlob(t, httpClient(t), blobURL(srv.URL(), "hostile/img", d))
	before := snapshot(t, base, cache)

	hex64 := strings.Repeat("ab", 32)
	abs := filepath.Join(outside, "abs")
	rel := "../outside/rel"
	cases := []struct {
		name, target string
		header       map[string]string
		// status, if set, is the one status the answer must have.
		status int
		// plain: the answer is net/http's own, written before any
		// handler runs, so it cannot carry a JSON error body. Only the
		// header over the server's MaxHeaderBytes is such a case: Go's
		// server answers "431 Request Header Fields Too Large" in plain
		// text and closes the connection (the distribution registry,
		// also on net/http, answers the same).
		plain bool
	}{
		{name: "dot-dot in name", target: "/v2/hostile/../../../outside/x/blobs/sha256:" + hex64},
		{name: "dot-dot in name, manifest", target: "/v2/hostile/img/../../../../outside/manifests/v1"},
		{name: "encoded dot-dot in name", target: "/v2/hostile/%2e%2e/%2e%2e/outside/manifests/v1"},
		{name: "encoded slash and dot-dot in name", target: "/v2/hostile%2f..%2f..%2foutside/img/blobs/sha256:" + hex64},
		{name: "absolute name", target: "/v2/" + abs + "/blobs/sha256:" + hex64},
		{name: "double slash name", target: "/v2//etc/passwd/manifests/v1"},
		{name: "dot-dot in digest", target: "/v2/hostile/img/blobs/sha256:../../../outside/dig"},
		{name: "encoded dot-dot in digest", target: "/v2/hostile/img/blobs/sha256:%2e%2e%2f%2e%2e%2f" + rel},
		{name: "absolute digest", target: "/v2/hostile/img/blobs/sha256:" + abs},
		{name: "digest of an unknown algorithm", target: "/v2/hostile/img/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"},
		{name: "digest of the wrong length", target: "/v2/hostile/img/blobs/sha256:" + hex64[:63]},
		{name: "uppercase digest", target: "/v2/hostile/img/blobs/sha256:" + strings.ToUpper(hex64)},
		{name: "dot-dot manifest digest", target: "/v2/hostile/img/manifests/sha256:..%2f..%2f" + rel},
		{name: "dot-dot tag", target: "/v2/hostile/img/manifests/..%2f..%2foutside"},
		{name: "huge header", target: "/v2/hostile/img/blobs/" + d.String(), header: map[string]string{"X-Huge": strings.Repeat("a", 3<<19)}, status: http.StatusRequestHeaderFieldsTooLarge, plain: true},
		{name: "range past the end", target: "/v2/hostile/img/blobs/" + d.String(), header: map[string]string{"Range": fmt.Sprintf("bytes=%d-", size+10)}, status: http.StatusRequestedRangeNotSatisfiable},
		{name: "ns with dot-dot", target: "/v2/hostile/img/manifests/v1?ns=..%2f..%2foutside"},
		{name: "ns with a scheme", target: "/v2/hostile/img/manifests/v1?ns=http://" + sf.p.Addr + "/x"},
		{name: "ns with a space", target: "/v2/hostile/img/manifests/v1?ns=a%20b"},
		{name: "ns with a NUL", target: "/v2/hostile/img/blobs/" + d.String() + "?ns=a%00b"},
		{name: "ns absolute", target: "/v2/hostile/img/manifests/v1?ns=" + abs},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawRequest(t, srv.Addr, "GET", tc.target, tc.header)
			if status < 400 || status > 499 || (tc.status != 0 && status != tc.status) {
				t.Errorf("GET %.200s: status %d, want a 4xx (%d if set); body %.300q", tc.target, status, tc.status, body)
			}
			if tc.plain {
				return
			}
			code, what := errorCode(body)
			if code == "" {
				t.Errorf("GET %.200s: status %d, %s", tc.target, status, what)
			} else if !specErrorCodes[code] {
				t.Errorf("GET %.200s: status %d, error code %q is not a distribution-spec code", tc.target, status, code)
			}
		})
	}
	// Pushes and deletes are refused with UNSUPPORTED.
	for _, m := range []struct{ method, target string }{
		{"POST", "/v2/hostile/img/blobs/uploads/"},
		{"PUT", "/v2/hostile/img/manifests/v2"},
		{"DELETE", "/v2/hostile/img/manifests/" + sf.fx.want.digest.String()},
		{"DELETE", "/v2/hostile/img/blobs/" + d.String()},
		{"PATCH", "/v2/hostile/img/blobs/uploads/x"},
	} {
		status, body := rawRequest(t, srv.Addr, m.method, m.target, nil)
		code, what := errorCode(body)
		if status != http.StatusMethodNotAllowed || code != "UNSUPPORTED" {
			t.Errorf("%s %s: status %d, code %q (%s), want 405 UNSUPPORTED", m.method, m.target, status, code, what)
		}
	}
	if after := snapshot(t, base, cache); after != before {
		t.Errorf("the hostile requests changed what is outside the cache:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, p := range []string{abs, filepath.Join(base, "rel"), "/etc/passwd/manifests"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s exists after the hostile requests", p)
		}
	}
	// serve is still up and right.
	if got, _ := getBlob(t, httpClient(t), blobURL(srv.URL(), "hostile/img", d)); got != d {
		t.Errorf("GET after the hostile requests: %s, want %s", got, d)
	}
}

// rawRequest sends one request with target written as is on the request
// line (no cleaning, no re-encoding) and returns the status and body of
// the answer.
func rawRequest(t *testing.T, addr, method, target string, header map[string]string) (int, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, serveTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check(t, conn.SetDeadline(time.Now().Add(serveTimeout))) // a failure guard only
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, target, addr)
	for k, v := range header {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v)
	}
	req.WriteString("Content-Length: 0\r\n\r\n")
	// Write while reading: a server may answer (431) and stop reading
	// before the request is all sent.
	go func() { _, _ = conn.Write(req.Bytes()) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %.200s: reading the answer: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body
}

// snapshot lists every path under root except those under skip, with
// its type and size: what a test compares to see that nothing outside
// skip was created, removed or changed.
func snapshot(t *testing.T, root, skip string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == skip {
			return filepath.SkipDir
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d\n", path, fi.Mode(), fi.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestServe_OfflineAfterPull pulls an image with crane through serve,
// stops the upstream registry, and pulls it again by tag through a new
// serve process on the same cache: with --offline, and without it (the
// upstream cannot be reached, so the tag resolves from index.json as warm
// does). Both give the upstream's image.
func TestServe_OfflineAfterPull(t *testing.T) {
	t.Parallel()
	crane := toolBin(t, regtest.Crane)
	sf := newServeFixture(t, "offline/img:v1", 64<<10)
	cache := t.TempDir() + "/cache"
	srv := startServe(t, "serve", cache, "--upstream", sf.p.Addr, "--insecure")
	runTool(t, crane, "pull", "--insecure", "--format", "oci", srv.Addr+"/offline/img:v1", t.TempDir()+"/layout")
	srv.Stop()
	// The upstream goes away: the registry and the proxy in front of it,
	// so that its address refuses connections.
	sf.reg.Stop()
	sf.p.Close()

	for _, args := range [][]string{{"--offline"}, nil} {
		t.Run(fmt.Sprintf("serve%s", strings.Join(append([]string{""}, args...), " ")), func(t *testing.T) {
			srv := startServe(t, "serve", cache, append([]string{"--upstream", sf.p.Addr, "--insecure"}, args...)...)
			ref := srv.Addr + "/offline/img:v1"
			if got := strings.TrimSpace(string(runTool(t, crane, "digest", "--insecure", ref))); got != sf.fx.want.digest.String() {
				t.Errorf("crane digest %s = %s, want %s", ref, got, sf.fx.want.digest)
			}
			dir := t.TempDir() + "/layout"
			runTool(t, crane, "pull", "--insecure", "--format", "oci", ref, dir)
			assertLayoutImage(t, "crane pull with the upstream down", dir, sf.fx)
		})
	}
}
