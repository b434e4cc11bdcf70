package regtest

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// requestLogSize is how many requests a Proxy remembers for a failing test's log.
const requestLogSize = 500

var (
	blobPath     = regexp.MustCompile(`^/v2/.+/blobs/[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`)
	uploadPath   = regexp.MustCompile(`^/v2/.+/blobs/uploads/`)
	manifestPath = regexp.MustCompile(`^/v2/.+/manifests/[^/]+$`)
)

// IsBlobGet reports whether r is a GET of a blob: /v2/<name>/blobs/<digest>.
func IsBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && blobPath.MatchString(r.URL.Path)
}

// IsManifestGet reports whether r is a GET of a manifest by tag or digest:
// /v2/<name>/manifests/<reference>.
func IsManifestGet(r *http.Request) bool {
	return r.Method == http.MethodGet && manifestPath.MatchString(r.URL.Path)
}

// IsUpload reports whether r is any request of a blob upload or mount:
// POST, PATCH or PUT under /v2/<name>/blobs/uploads/.
func IsUpload(r *http.Request) bool { return uploadPath.MatchString(r.URL.Path) }

// HasDigest returns a condition that holds for requests whose path ends in
// the digest d ("sha256:..."): the blob or manifest d, whatever the method.
func HasDigest(d string) func(*http.Request) bool {
	return func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, "/"+d) }
}

// Stats counts what went through a Proxy since it started or was last Reset.
// Every request is counted when it arrives, before any fault applies to it,
// and in the counts of the Reset it arrived after: what the handler of a
// request that arrived before a Reset does later (write the rest of a body
// to a client that gave up, say) does not count after it.
type Stats struct {
	// Requests counts every request.
	Requests int64
	// BlobGets counts GET /v2/<name>/blobs/<digest>.
	BlobGets int64
	// BlobHeads counts HEAD /v2/<name>/blobs/<digest>.
	BlobHeads int64
	// BlobBytes counts the body bytes sent to clients in 2xx answers to
	// blob GETs: a cut body counts what was sent; error bodies, whether the
	// registry's or an injected Status, count nothing. Each
	// write is counted before it is handed to the connection, so once a
	// client has read a body, the count includes it.
	BlobBytes int64
	// ManifestGets counts GET /v2/<name>/manifests/<reference>.
	ManifestGets int64
	// ManifestHeads counts HEAD /v2/<name>/manifests/<reference>.
	ManifestHeads int64
	// BlobUploads counts blob uploads committed through the proxy, that is
	// PUT /v2/<name>/blobs/uploads/<id>?digest=..., plus single-request
	// uploads (POST /v2/<name>/blobs/uploads/?digest=...).
	BlobUploads int64
	// Mounts counts cross-repository mount requests
	// (POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>), whether
	// or not the registry mounted the blob.
	Mounts int64
}

// counters are the live counts behind Stats.
type counters struct {
	requests, blobGets, blobHeads, blobBytes atomic.Int64
	manifestGets, manifestHeads, blobUploads atomic.Int64
	mounts                                   atomic.Int64
}

// Proxy is a reverse proxy on 127.0.0.1 in front of a registry. It counts
// the requests and bytes that pass through it (Stats) and misbehaves on
// demand (Inject). Its methods are safe for concurrent use, also while
// requests are in flight.
//
// The proxy keeps the client's Host header, so the upload locations that
// the registry returns point back to the proxy and a whole push goes
// through it.
type Proxy struct {
	// Addr is "127.0.0.1:PORT", the host part of references that go
	// through the proxy.
	Addr string
	// URL is "http://" + Addr.
	URL string

	srv *httptest.Server
	rp  *httputil.ReverseProxy
	tr  *http.Transport
	c   atomic.Pointer[counters] // replaced by Reset

	mu     sync.Mutex
	faults []*Injection
	log    []string // ring of the last requestLogSize requests
	next   int      // where the next entry of log goes
}

// NewProxy starts a proxy to target, a registry's "host:port" or
// "http://host:port". It is closed, and its last requests are logged if t
// failed, when t's cleanup runs.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	if !strings.Contains(target, "://") {
		target = "http://" + target
	}
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("proxy target %q: %v", target, err)
	}
	p := &Proxy{
		tr: &http.Transport{
			Proxy:               nil, // never an HTTP_PROXY from the environment
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			DisableCompression:  true, // pass bytes as the registry sent them
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
		},
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
		},
		Transport:      p.tr,
		ModifyResponse: modifyResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	p.c.Store(new(counters))
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	p.URL = p.srv.URL
	p.Addr = strings.TrimPrefix(p.srv.URL, "http://")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy %s to %s, last requests:\n%s", p.Addr, target, strings.Join(p.requestLog(), "\n"))
		}
	})
	t.Cleanup(p.Close)
	return p
}

// Close stops the proxy and closes its connections. It is called by t's
// cleanup; calling it again does nothing.
func (p *Proxy) Close() {
	p.srv.CloseClientConnections()
	p.srv.Close()
	p.tr.CloseIdleConnections()
}

// Stats returns the counts since the proxy started or was last Reset.
func (p *Proxy) Stats() Stats {
	c := p.c.Load()
	return Stats{
		Requests:      c.requests.Load(),
		BlobGets:      c.blobGets.Load(),
		BlobHeads:     c.blobHeads.Load(),
		BlobBytes:     c.blobBytes.Load(),
		ManifestGets:  c.manifestGets.Load(),
		ManifestHeads: c.manifestHeads.Load(),
		BlobUploads:   c.blobUploads.Load(),
		Mounts:        c.mounts.Load(),
	}
}

// Reset sets every count to zero and forgets the request log. It leaves the
// faults on. Requests in flight go on counting in the counts Reset ended,
// not in the new ones.
func (p *Proxy) Reset() {
	p.c.Store(new(counters))
	p.mu.Lock()
	p.log, p.next = nil, 0
	p.mu.Unlock()
}

// Inject turns f on, after the faults already on, and returns a handle to
// count how often it applied and to turn it off. It affects requests that
// arrive after it returns.
func (p *Proxy) Inject(f Fault) *Injection {
	in := &Injection{fault: f, rng: rand.New(rand.NewPCG(1, 2)), changed: make(chan struct{})}
	p.mu.Lock()
	p.faults = append(p.faults, in)
	p.mu.Unlock()
	return in
}

// Remove turns the fault off. Requests it already applies to finish as they
// started.
func (in *Injection) Remove() {
	in.mu.Lock()
	in.gone = true
	in.mu.Unlock()
}

// ClearFaults turns every fault off.
func (p *Proxy) ClearFaults() {
	p.mu.Lock()
	faults := p.faults
	p.faults = nil
	p.mu.Unlock()
	for _, in := range faults {
		in.Remove()
	}
}

type planKey struct{}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	c := p.c.Load()
	p.count(r, c)
	pl := p.plan(r)

	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	if IsBlobGet(r) {
		rec.bytes = &c.blobBytes
	}
	defer func() { p.logRequest(r, rec, pl) }()

	// forwarded: the request got past its holds and delays; answered:
	// and its handler returned (a cut panics instead).
	forwarded, answered := false, false
	if len(pl.opens) > 0 {
		defer func() {
			if !forwarded {
				return // given up by its client, unanswered
			}
			if answered {
				// Out of the server's buffers before anyone is let go.
				_ = http.NewResponseController(rec).Flush()
			}
			for _, g := range pl.opens {
				g.Open()
			}
		}()
	}
	for _, g := range pl.holds {
		select {
		case <-g.open:
		case <-r.Context().Done():
			return
		}
	}
	if pl.delay > 0 {
		t := time.NewTimer(pl.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	forwarded = true
	if pl.status != 0 {
		writeStatus(rec, r, pl.status)
		answered = true
		return
	}
	var out http.ResponseWriter = rec
	if f := pl.cut; f != nil {
		out = &cutWriter{ResponseWriter: rec, limit: f.n, reset: f.kind == kindReset}
	}
	if len(pl.rewrite) > 0 {
		r = r.WithContext(context.WithValue(r.Context(), planKey{}, pl.rewrite))
	}
	// When a cut drops the connection, ReverseProxy panics with
	// http.ErrAbortHandler, which the server takes quietly; the deferred
	// log entry is still written.
	p.rp.ServeHTTP(out, r)
	answered = true
}

// modifyResponse applies the FlipByte and MutateJSON faults that serve put
// in the request's context.
func modifyResponse(resp *http.Response) error {
	faults, _ := resp.Request.Context().Value(planKey{}).([]Fault)
	return rewriteResponse(resp, faults)
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	for rw := w; rw != nil; {
		if rec, ok := rw.(*recorder); ok {
			rec.err = err
			break
		}
		u, ok := rw.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		rw = u.Unwrap()
	}
	w.WriteHeader(http.StatusBadGateway)
}

// count updates the counters c for a request that just arrived.
func (p *Proxy) count(r *http.Request, c *counters) {
	c.requests.Add(1)
	path, q := r.URL.Path, r.URL.Query()
	switch {
	case blobPath.MatchString(path) && r.Method == http.MethodGet:
		c.blobGets.Add(1)
	case blobPath.MatchString(path) && r.Method == http.MethodHead:
		c.blobHeads.Add(1)
	case manifestPath.MatchString(path) && r.Method == http.MethodGet:
		c.manifestGets.Add(1)
	case manifestPath.MatchString(path) && r.Method == http.MethodHead:
		c.manifestHeads.Add(1)
	case uploadPath.MatchString(path) && r.Method == http.MethodPost && q.Has("mount"):
		c.mounts.Add(1)
	case uploadPath.MatchString(path) && q.Has("digest") &&
		(r.Method == http.MethodPut || r.Method == http.MethodPost):
		c.blobUploads.Add(1)
	}
}

// plan decides which faults apply to r, counting each one that does.
func (p *Proxy) plan(r *http.Request) *plan {
	p.mu.Lock()
	faults := p.faults
	p.mu.Unlock()
	pl := &plan{}
	for _, in := range faults {
		if !in.fire(r) {
			continue
		}
		f := in.fault
		if f.kind == kindObserve {
			f.see(r) // not a fault: no name in the request log
			continue
		}
		pl.names = append(pl.names, f.String())
		switch f.kind {
		case kindHold:
			pl.holds = append(pl.holds, f.gate)
		case kindOpen:
			pl.opens = append(pl.opens, f.gate)
		case kindLatency:
			pl.delay += f.delay
		case kindStatus:
			pl.status = f.status
			return pl
		case kindReset, kindTruncate:
			if pl.cut == nil {
				pl.cut = &f
			}
		case kindFlip, kindMutate:
			pl.rewrite = append(pl.rewrite, f)
		}
	}
	return pl
}

func (p *Proxy) logRequest(r *http.Request, rec *recorder, pl *plan) {
	uri := r.URL.RequestURI()
	if q := r.URL.Query(); q.Has("_state") {
		// The registry's upload state token is long and says nothing to a reader.
		q.Set("_state", "...")
		uri = r.URL.Path + "?" + q.Encode()
	}
	line := fmt.Sprintf("%s %s -> %d, %d body bytes", r.Method, uri, rec.status, rec.written)
	if !pl.empty() {
		line += " [fault: " + strings.Join(pl.names, ", ") + "]"
	}
	if rec.err != nil {
		line += fmt.Sprintf(" (upstream: %v)", rec.err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.log) < requestLogSize {
		p.log = append(p.log, line)
	} else {
		p.log[p.next] = line
	}
	p.next = (p.next + 1) % requestLogSize
}

// requestLog returns the remembered requests, oldest first.
func (p *Proxy) requestLog() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.log) < requestLogSize {
		return append([]string(nil), p.log...)
	}
	return append(append([]string(nil), p.log[p.next:]...), p.log[:p.next]...)
}

// recorder notes the status and body size of a response and, for blob GETs,
// adds each write to the blob byte counter before passing it on.
type recorder struct {
	http.ResponseWriter
	status  int
	written int64
	bytes   *atomic.Int64 // nil unless the request is a blob GET
	err     error         // the upstream error, if any
}

func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *recorder) WriteHeader(code int) {
	if code >= 200 { // 1xx are interim: the final status follows
		w.status = code
		if code > 299 {
			w.bytes = nil // an error body is no blob
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	// Count first: a client that has read the body must see it counted.
	if w.bytes != nil {
		w.bytes.Add(int64(len(b)))
	}
	n, err := w.ResponseWriter.Write(b)
	if w.bytes != nil && n < len(b) {
		w.bytes.Add(int64(n - len(b)))
	}
	w.written += int64(n)
	return n, err
}
