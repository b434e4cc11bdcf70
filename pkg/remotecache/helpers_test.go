package remotecache_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/testregistry"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// fast keeps ggcr from retrying with its default backoff (1 s, 3 s, 9 s),
// so that tests of unreachable or failing registries stay quick.
var fast = remotecache.WithRemote(remote.WithRetryBackoff(remote.Backoff{Steps: 1}))

// Paths of the distribution API that the test registry counts.
var (
	blobPath     = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$`)
	uploadPath   = regexp.MustCompile(`^/v2/(.+)/blobs/uploads/(.*)$`)
	manifestPath = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)
	storagePath  = regexp.MustCompile(`^/storage/(.+)/(sha256:[0-9a-f]{64})$`)
)

// fault replaces the registry's answer to a GET of one blob. next is the
// real registry.
type fault func(w http.ResponseWriter, r *http.Request, next http.Handler)

// testRegistry is ggcr's in-process registry behind a handler that counts
// what the tests assert on (blob GETs and bytes, manifest GETs, uploads,
// mounts) and injects faults into blob GETs, as ggcr's
// remote/error_roundtrip_test.go does.
//
// A request is counted when it arrives, and a body's bytes before they are
// written, so a client that has its answer finds it counted: counters read
// once a pull has returned are complete. A request belongs to the reset
// it arrived after: the bytes a handler of an earlier one writes later (a
// fault still writing to a client that gave up) are not counted.
type testRegistry struct {
	reg  http.Handler
	srv  *httptest.Server
	host string

	mu            sync.Mutex
	gen           int            // reset's count: the phase a request belongs to
	changed       chan struct{}  // closed, and replaced, when a request arrives
	requests      int            // every request
	blobGets      map[string]int // digest → GETs of /v2/<repo>/blobs/<digest>
	blobBytes     int64          // body bytes sent for those GETs
	blobHeads     int            // HEADs of blobs
	manifestGets  map[string]int // tag or digest → GETs of /v2/<repo>/manifests/<ref>
	manifestHeads int            // HEADs of manifests
	storageGets   map[string]int // digest → GETs of /storage/<repo>/<digest> (redirect targets)
	uploads       []string       // digests of finished uploads
	mounts        []string       // digests mounted from another repository
	faults        map[string]fault

	// scoped emulates a registry whose blobs belong to repositories: a
	// HEAD of a blob in a repository that never received it is a 404, and
	// a POST with ?mount=&from= is answered 201 when the source holds it.
	// ggcr's registry keeps one global blob store and ignores mounts.
	scoped bool
	owned  map[string]map[string]bool // repository → digests
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	r := &testRegistry{reg: testregistry.Handler()}
	r.reset()
	r.srv = testregistry.Start(t, r)
	r.host = testregistry.Host(r.srv)
	return r
}

// reset zeroes the counters and removes the faults.
func (r *testRegistry) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	if r.changed == nil {
		r.changed = make(chan struct{})
	}
	r.requests, r.blobBytes, r.blobHeads, r.manifestHeads = 0, 0, 0, 0
	r.blobGets = map[string]int{}
	r.manifestGets = map[string]int{}
	r.storageGets = map[string]int{}
	r.uploads, r.mounts = nil, nil
	r.faults = map[string]fault{}
}

func (r *testRegistry) setFault(h v1.Hash, f fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults[h.String()] = f
}

func (r *testRegistry) clearFaults() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = map[string]fault{}
}

// gets returns how many GETs the blob h had since the last reset.
func (r *testRegistry) gets(h v1.Hash) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobGets[h.String()]
}

func (r *testRegistry) totalBlobGets() (n int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.blobGets {
		n += c
	}
	return n, r.blobBytes
}

// heads returns how many HEADs of manifests there were since the last reset.
func (r *testRegistry) heads() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.manifestHeads
}

func (r *testRegistry) manifestGetsOf(ref string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.manifestGets[ref]
}

// manifestDigestGets counts GETs of manifests by digest (not by tag).
func (r *testRegistry) manifestDigestGets() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for ref, c := range r.manifestGets {
		if strings.HasPrefix(ref, "sha256:") {
			n += c
		}
	}
	return n
}

func (r *testRegistry) requestCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// stuck is how long a test waits for what a correct program does in
// milliseconds before it calls the wait a hang. Only a hang takes that
// long; no outcome depends on it otherwise.
const stuck = time.Minute

// await waits until cond, called with r.mu held, holds: it is checked
// each time a request arrives and has been counted. It fails the test if
// cond does not hold within stuck.
func (r *testRegistry) await(t testing.TB, what string, cond func() bool) {
	t.Helper()
	timeout := time.NewTimer(stuck)
	defer timeout.Stop()
	for {
		r.mu.Lock()
		ok, changed := cond(), r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("waited %v for %s", stuck, what)
		}
	}
}

// arrived tells await that a request has been counted. r.mu must be held.
func (r *testRegistry) arrived() {
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *testRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.requests++
	r.arrived()
	r.mu.Unlock()
	p := req.URL.Path
	if m := storagePath.FindStringSubmatch(p); m != nil {
		r.serveStorage(w, req, m[1], m[2])
		return
	}
	if m := blobPath.FindStringSubmatch(p); m != nil {
		r.serveBlob(w, req, m[1], m[2])
		return
	}
	if m := uploadPath.FindStringSubmatch(p); m != nil {
		r.serveUpload(w, req, m[1])
		return
	}
	if m := manifestPath.FindStringSubmatch(p); m != nil {
		r.mu.Lock()
		switch req.Method {
		case http.MethodGet:
			r.manifestGets[m[2]]++
		case http.MethodHead:
			r.manifestHeads++
		}
		r.arrived()
		r.mu.Unlock()
	}
	r.reg.ServeHTTP(w, req)
}

func (r *testRegistry) serveBlob(w http.ResponseWriter, req *http.Request, repo, d string) {
	r.mu.Lock()
	gen := r.gen
	switch req.Method {
	case http.MethodGet:
		r.blobGets[d]++
	case http.MethodHead:
		r.blobHeads++
		if r.scoped && !r.owned[repo][d] {
			r.mu.Unlock()
			w.WriteHeader(http.StatusNotFound)
			return
		}
	}
	f := r.faults[d]
	r.arrived()
	r.mu.Unlock()
	if req.Method != http.MethodGet {
		r.reg.ServeHTTP(w, req)
		return
	}
	// Bytes are counted as they are written, before the client can see
	// them, so that a test reading the counters after its reads sees all.
	cw := &countingWriter{ResponseWriter: w, onWrite: func(n int) {
		r.mu.Lock()
		if r.gen == gen {
			r.blobBytes += int64(n)
		}
		r.mu.Unlock()
	}}
	if f != nil {
		f(cw, req, r.reg)
		return
	}
	r.reg.ServeHTTP(cw, req)
}

// serveStorage is where redirected blob GETs land: the blob's bytes, as a
// storage bucket would serve them, outside the /v2/ API.
func (r *testRegistry) serveStorage(w http.ResponseWriter, req *http.Request, repo, d string) {
	r.mu.Lock()
	r.storageGets[d]++
	r.arrived()
	r.mu.Unlock()
	req2 := req.Clone(req.Context())
	req2.URL.Path = "/v2/" + repo + "/blobs/" + d
	req2.RequestURI = ""
	r.reg.ServeHTTP(w, req2)
}

func (r *testRegistry) serveUpload(w http.ResponseWriter, req *http.Request, repo string) {
	q := req.URL.Query()
	r.mu.Lock()
	scoped, gen := r.scoped, r.gen
	r.mu.Unlock()
	if req.Method == http.MethodPost && q.Get("mount") != "" && scoped {
		d, from := q.Get("mount"), q.Get("from")
		r.mu.Lock()
		ok := r.owned[from][d]
		if ok {
			r.own(repo, d)
			r.mounts = append(r.mounts, d)
		}
		r.mu.Unlock()
		if ok {
			w.Header().Set("Location", "/v2/"+repo+"/blobs/"+d)
			w.Header().Set("Docker-Content-Digest", d)
			w.WriteHeader(http.StatusCreated)
			return
		}
	}
	d := q.Get("digest")
	if d == "" || (req.Method != http.MethodPut && req.Method != http.MethodPost) {
		r.reg.ServeHTTP(w, req)
		return
	}
	// Recorded before the response goes out, so that the client, once
	// answered, always finds the upload counted.
	cw := &countingWriter{ResponseWriter: w, onHeader: func(code int) {
		if code != http.StatusCreated {
			return
		}
		r.mu.Lock()
		if r.gen == gen {
			r.uploads = append(r.uploads, d)
		}
		r.own(repo, d)
		r.mu.Unlock()
	}}
	r.reg.ServeHTTP(cw, req)
}

// scope makes blobs belong to repositories (see testRegistry.scoped).
func (r *testRegistry) scope() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.scoped = true
}

func (r *testRegistry) storageGetCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.storageGets {
		n += c
	}
	return n
}

func (r *testRegistry) uploadsAndMounts() (uploads, mounts []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sortedStrings(r.uploads), sortedStrings(r.mounts)
}

// own records that repo holds d. r.mu must be held.
func (r *testRegistry) own(repo, d string) {
	if r.owned == nil {
		r.owned = map[string]map[string]bool{}
	}
	if r.owned[repo] == nil {
		r.owned[repo] = map[string]bool{}
	}
	r.owned[repo][d] = true
}

// countingWriter calls onHeader with the status before it is sent, and
// onWrite with each body write's length before the bytes are sent.
type countingWriter struct {
	http.ResponseWriter
	onHeader    func(code int)
	onWrite     func(n int)
	wroteHeader bool
}

func (w *countingWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.wroteHeader = true
		if w.onHeader != nil {
			w.onHeader(code)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.onWrite != nil {
		w.onWrite(len(p))
	}
	return w.ResponseWriter.Write(p)
}

// Flush lets faults that cut a connection push out what they wrote.
func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Faults.

// mangle serves the registry's answer with its body changed by fn and a
// Content-Length that matches the changed body, so that only the bytes
// are wrong, not the HTTP framing.
func mangle(fn func([]byte) []byte) fault {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := fn(bytes.Clone(rec.Body.Bytes()))
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body)
	}
}

func flipByte() fault {
	return mangle(func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b })
}

func truncateBody() fault {
	return mangle(func(b []byte) []byte { return b[:len(b)/2] })
}

func extraBytes() fault {
	return mangle(func(b []byte) []byte { return append(b, "junk"...) })
}

// extraBytesLater sends the whole blob, flushes, waits, and then sends
// junk, with a Content-Length that covers both: the client reads the blob
// to its last byte and then, in a read of its own, the junk together with
// io.EOF.
func extraBytesLater() fault {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		w.Header().Set("Content-Length", strconv.Itoa(len(body)+4))
		w.WriteHeader(http.StatusOK)
		w.Write(body)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		time.Sleep(20 * time.Millisecond)
		w.Write([]byte("junk"))
	}
}

// cutConnection announces the whole length, sends half the body and drops
// the connection.
func cutConnection() fault {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body[:len(body)/2])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
}

func status(code int) fault {
	return func(w http.ResponseWriter, _ *http.Request, _ http.Handler) {
		w.WriteHeader(code)
	}
}

func delay(d time.Duration) fault {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		time.Sleep(d)
		next.ServeHTTP(w, r)
	}
}

// holder is a fault that holds blob GETs: it answers none until open is
// called, and then serves the blob, unless the client has given up on the
// request first (its connection closed). It counts the requests it holds
// and how each ended, so that a test can wait for them without a clock.
type holder struct {
	release chan struct{}
	once    sync.Once

	mu      sync.Mutex
	changed chan struct{} // closed, and replaced, when a count changes
	held    int           // requests that arrived
	gaveUp  int           // of those, given up by their client unanswered
	served  int           // of those, answered once open was called
}

// newHolder returns a holder that t's cleanup opens, so that no handler
// it holds outlives the test (the test server's Close waits for them).
// Call it after newTestRegistry, whose cleanup must run after this one.
func newHolder(t testing.TB) *holder {
	h := &holder{release: make(chan struct{}), changed: make(chan struct{})}
	t.Cleanup(h.open)
	return h
}

// open lets the held requests and every later one through.
func (h *holder) open() { h.once.Do(func() { close(h.release) }) }

func (h *holder) fault() fault {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		h.note(func() { h.held++ })
		select {
		case <-h.release:
			next.ServeHTTP(w, r)
			h.note(func() { h.served++ })
		case <-r.Context().Done():
			h.note(func() { h.gaveUp++ })
		}
	}
}

func (h *holder) note(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f()
	close(h.changed)
	h.changed = make(chan struct{})
}

// counts returns held, gaveUp and served.
func (h *holder) counts() (held, gaveUp, served int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held, h.gaveUp, h.served
}

// wait waits until cond holds of the counts, and reports whether it did
// before ctx ended.
func (h *holder) wait(ctx context.Context, cond func(held, gaveUp, served int) bool) bool {
	for {
		h.mu.Lock()
		ok, changed := cond(h.held, h.gaveUp, h.served), h.changed
		h.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// await is wait for a test goroutine, which fails the test if cond does
// not hold within stuck.
func (h *holder) await(t testing.TB, what string, cond func(held, gaveUp, served int) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stuck)
	defer cancel()
	if !h.wait(ctx, cond) {
		held, gaveUp, served := h.counts()
		t.Fatalf("waited %v for %s: %d requests held, %d given up, %d served", stuck, what, held, gaveUp, served)
	}
}

// redirectTo answers a blob GET with a 307 to base/storage/<repo>/<digest>.
func redirectTo(base string) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		m := blobPath.FindStringSubmatch(r.URL.Path)
		http.Redirect(w, r, base+"/storage/"+m[1]+"/"+m[2], http.StatusTemporaryRedirect)
	}
}

// Fixtures.

// fixture is an image or index pushed to the test registry, with the bytes
// every layer has in the registry.
type fixture struct {
	ref    name.Reference
	digest v1.Hash // of the manifest or index

	// For an image:
	img    v1.Image
	config v1.Hash
	layers []v1.Hash

	comp   map[v1.Hash][]byte // layer digest → compressed bytes
	uncomp map[v1.Hash][]byte // layer digest → uncompressed bytes
}

// randomImage is an image of n gzip layers of size bytes of random data,
// from a seeded source so that failures reproduce.
func randomImage(t testing.TB, seed int64, n, size int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, n, random.WithSource(rand.NewSource(seed)))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func (r *testRegistry) ref(t testing.TB, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + s)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// pushImage pushes img as repoTag and returns its fixture. The counters
// start from zero after it.
func (r *testRegistry) pushImage(t testing.TB, repoTag string, img v1.Image) *fixture {
	t.Helper()
	ref := r.ref(t, repoTag)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	fx := &fixture{ref: ref, img: img, comp: map[v1.Hash][]byte{}, uncomp: map[v1.Hash][]byte{}}
	// The bytes to compare with are the registry's, read back.
	ri, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	fx.addImage(t, ri)
	r.reset()
	fx.digest = must(img.Digest())
	fx.config = must(img.ConfigName())
	for _, l := range must(img.Layers()) {
		fx.layers = append(fx.layers, must(l.Digest()))
	}
	return fx
}

func (fx *fixture) addImage(t testing.TB, img v1.Image) {
	t.Helper()
	for _, l := range must(img.Layers()) {
		h := must(l.Digest())
		fx.comp[h] = readAll(t, l.Compressed)
		fx.uncomp[h] = readAll(t, l.Uncompressed)
	}
}

// platforms of the multi-platform fixture index.
var platforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64", Variant: "v8"},
	{OS: "linux", Architecture: "s390x"},
}

// pushIndex pushes an index of one random image per platform and returns
// its fixture and the images by platform.
func (r *testRegistry) pushIndex(t testing.TB, repoTag string, seed int64) (*fixture, map[string]v1.Image) {
	t.Helper()
	adds := make([]mutate.IndexAddendum, 0, len(platforms))
	byPlatform := map[string]v1.Image{}
	fx := &fixture{comp: map[v1.Hash][]byte{}, uncomp: map[v1.Hash][]byte{}}
	for i, p := range platforms {
		img := randomImage(t, seed+int64(i), 2, 2048)
		// validate.Index checks that the config says the platform too.
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		p := p
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
		byPlatform[p.String()] = img
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	fx.ref = r.ref(t, repoTag)
	if err := remote.WriteIndex(fx.ref, idx); err != nil {
		t.Fatalf("pushing %s: %v", fx.ref, err)
	}
	fx.digest = must(idx.Digest())
	// The bytes to compare with are the registry's, read back.
	ri, err := remote.Index(fx.ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, desc := range must(ri.IndexManifest()).Manifests {
		child, err := ri.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		fx.addImage(t, child)
	}
	r.reset()
	return fx, byPlatform
}

// assertImage checks that img is the image want, byte for byte: manifest,
// config, and every layer compressed and uncompressed.
func (fx *fixture) assertImage(t testing.TB, img, want v1.Image) {
	t.Helper()
	if got, want := must(img.Digest()), must(want.Digest()); got != want {
		t.Errorf("Digest() = %s, want %s", got, want)
	}
	if got, want := must(img.RawManifest()), must(want.RawManifest()); !bytes.Equal(got, want) {
		t.Errorf("RawManifest() differs from the registry's:\n got %s\nwant %s", got, want)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatalf("RawConfigFile: %v", err)
	}
	if !bytes.Equal(cfg, must(want.RawConfigFile())) {
		t.Errorf("RawConfigFile() differs from the registry's")
	}
	ls := must(img.Layers())
	if len(ls) != len(must(want.Layers())) {
		t.Fatalf("%d layers, want %d", len(ls), len(must(want.Layers())))
	}
	for i, l := range ls {
		h := must(l.Digest())
		if got := readAll(t, l.Compressed); !bytes.Equal(got, fx.comp[h]) {
			t.Errorf("layer %d (%s): Compressed() gave %d bytes that differ from the registry's %d", i, h, len(got), len(fx.comp[h]))
		}
		if got := readAll(t, l.Uncompressed); !bytes.Equal(got, fx.uncomp[h]) {
			t.Errorf("layer %d (%s): Uncompressed() gave %d bytes that differ from the registry's %d", i, h, len(got), len(fx.uncomp[h]))
		}
	}
}

// Stores.

func openStore(t testing.TB) (*store.Store, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cache")
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func blobFile(dir string, h v1.Hash) string {
	return filepath.Join(dir, layout.BlobsDir, h.Algorithm, h.Hex)
}

func toDigest(h v1.Hash) digest.Digest { return digest.Digest(h.String()) }

// ingestLitter lists what ingest/ holds besides lock files (which are
// kept by design and swept when old): temp files of unfinished writes.
func ingestLitter(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, layout.IngestDir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		// Lock files stay, and so do partial downloads and their hash
		// states: a download cut or closed early is kept for the next
		// one to resume (see partials).
		if !strings.HasSuffix(e.Name(), ".lock") && !strings.HasSuffix(e.Name(), ".partial") &&
			!strings.HasSuffix(e.Name(), ".hashstate") {
			out = append(out, e.Name())
		}
	}
	return out
}

// partials lists the partial downloads kept in ingest/, and their hash
// states.
func partials(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, layout.IngestDir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".partial") || strings.HasSuffix(e.Name(), ".hashstate") {
			out = append(out, e.Name())
		}
	}
	return out
}

// assertClean checks that every blob of the store verifies and that
// ingest/ holds no temp files.
func assertClean(t testing.TB, s *store.Store) {
	t.Helper()
	ctx := context.Background()
	var bad []string
	err := s.Walk(ctx, func(i store.Info) error {
		if _, err := s.Stat(ctx, i.Digest, store.VerifyFirst); err != nil {
			bad = append(bad, err.Error())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Errorf("store not clean:\n%s", strings.Join(bad, "\n"))
	}
	if l := ingestLitter(t, s.Dir()); len(l) > 0 {
		t.Errorf("ingest/ holds %v, want no temp files", l)
	}
}

func assertStored(t testing.TB, s *store.Store, h v1.Hash) {
	t.Helper()
	if _, err := s.Stat(context.Background(), toDigest(h), store.VerifyFirst); err != nil {
		t.Errorf("blob %s: %v, want it stored and whole", h, err)
	}
}

func assertNotStored(t testing.TB, s *store.Store, h v1.Hash) {
	t.Helper()
	if _, err := s.Stat(context.Background(), toDigest(h)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stat(%s) = %v, want ErrNotFound", h, err)
	}
}

// corruption is a way to damage a cached blob.
type corruption struct {
	name  string
	apply func(t testing.TB, path string)
}

var corruptions = []corruption{
	{"truncated", func(t testing.TB, path string) {
		writable(t, path)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, fi.Size()/2); err != nil {
			t.Fatal(err)
		}
	}},
	{"one byte flipped", func(t testing.TB, path string) {
		writable(t, path)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x01
		if err := os.WriteFile(path, b, 0o444); err != nil {
			t.Fatal(err)
		}
	}},
	{"empty file", func(t testing.TB, path string) {
		writable(t, path)
		if err := os.WriteFile(path, nil, 0o444); err != nil {
			t.Fatal(err)
		}
	}},
	{"directory", func(t testing.TB, path string) {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(path, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}},
	// The link points at a file with the right bytes: a symlink is
	// refused as such, not only when its target is wrong.
	{"symlink to the right bytes", func(t testing.TB, path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(t.TempDir(), "elsewhere")
		if err := os.WriteFile(target, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}},
}

func writable(t testing.TB, path string) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Logs.

// logRecorder is a slog.Handler that keeps every record, so tests can
// count warnings.
type logRecorder struct {
	mu      sync.Mutex
	records []string
	warns   int
}

func newLogger() (*slog.Logger, *logRecorder) {
	h := &logRecorder{}
	return slog.New(h), h
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, b.String())
	if r.Level >= slog.LevelWarn {
		h.warns++
	}
	return nil
}

func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

func (h *logRecorder) warnings() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.records {
		if strings.HasPrefix(r, "WARN") || strings.HasPrefix(r, "ERROR") {
			out = append(out, r)
		}
	}
	return out
}

// Reading.

func readAll(t testing.TB, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tryReadAll opens and reads to the end, returning the first error.
func tryReadAll(open func() (io.ReadCloser, error)) ([]byte, error) {
	rc, err := open()
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return b, err
}

// tryCopyAll is tryReadAll through io.Copy, which uses the reader's
// WriteTo.
func tryCopyAll(open func() (io.ReadCloser, error)) ([]byte, error) {
	rc, err := open()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	_, err = io.Copy(&b, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return b.Bytes(), err
}

// zstdLayer is a zstd-compressed layer of a small tar.
func zstdLayer(t testing.TB) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, body := range []string{"hello from zstd\n", strings.Repeat("layercache ", 1000)} {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("file%d.txt", i), Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	raw := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
		tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func appendLayers(t testing.TB, base v1.Image, ls ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(base, ls...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// withWrongDiffID returns img with the diff ID of layer i in its config
// replaced by the hash of nothing.
func withWrongDiffID(t testing.TB, img v1.Image, i int) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	wrong, _, err := v1.SHA256(bytes.NewReader(nil))
	if err != nil {
		t.Fatal(err)
	}
	cf.RootFS.DiffIDs[i] = wrong
	out, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := out.ConfigFile()
	if err != nil || got.RootFS.DiffIDs[i] != wrong {
		t.Fatalf("could not plant a wrong diff ID: %v", err)
	}
	return out
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// countingTransport counts every request, to prove a code path made none.
type countingTransport struct {
	mu    sync.Mutex
	n     int
	inner http.RoundTripper
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.inner.RoundTrip(r)
}

func (c *countingTransport) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
