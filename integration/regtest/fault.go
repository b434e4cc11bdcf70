package regtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// faultKind says what a Fault does.
type faultKind int

const (
	kindStatus   faultKind = iota + 1 // answer with a status, don't forward
	kindLatency                       // wait, then forward
	kindReset                         // forward, cut the body, reset the connection
	kindTruncate                      // forward, cut the body, close the connection
	kindFlip                          // forward, flip one body byte
	kindMutate                        // forward, rewrite the JSON body
	kindHold                          // wait for a gate to open, then forward
	kindOpen                          // forward, then open a gate
	kindObserve                       // call a function, change nothing
)

var kindNames = map[faultKind]string{
	kindStatus:   "status",
	kindLatency:  "latency",
	kindReset:    "reset",
	kindTruncate: "truncate",
	kindFlip:     "flip",
	kindMutate:   "mutate-json",
	kindHold:     "hold",
	kindOpen:     "open",
	kindObserve:  "observe",
}

// A Fault is a misbehaviour of a Proxy. Make one with Status, Latency,
// ResetAfter, TruncateAfter, FlipByte, MutateJSON, HoldUntil or OpenAfter,
// narrow it with Only, Times and Rate, and turn it on with Proxy.Inject.
//
// By default a fault applies to every request. Several faults can be on at
// once; for each request the proxy goes through them in the order they were
// injected: latencies add up, the first Status that applies answers the
// request (the faults after it are not considered), the first ResetAfter or
// TruncateAfter cuts the body, and every FlipByte and MutateJSON is applied.
// A request waits for every gate a HoldUntil names before anything else,
// and opens the gates of every OpenAfter once it has been answered.
//
// A Fault is a value: its methods return a changed copy.
type Fault struct {
	kind   faultKind
	status int
	n      int64 // ResetAfter/TruncateAfter: bytes let through; FlipByte: offset
	delay  time.Duration
	mutate func(doc map[string]any)
	see    func(*http.Request) // Observe
	gate   *Gate
	match  []func(*http.Request) bool
	times  int64
	rate   float64
}

// Status answers matching requests with code, without forwarding them, and
// with a registry-style JSON error body ({"errors":[{"code":...}]}). The
// error code is the one a registry would use for the status: BLOB_UNKNOWN
// or MANIFEST_UNKNOWN for 404, UNAUTHORIZED for 401, DENIED for 403,
// TOOMANYREQUESTS for 429, UNAVAILABLE for 5xx, else UNKNOWN.
//
// ggcr retries 408, 429, 500, 502, 503 and 504 (three tries, one then three
// seconds apart, unless remote.WithRetryBackoff says otherwise), so
// Status(503).Times(1) is a fault that a retry hides, and an unlimited
// Status(503) one that it does not.
func Status(code int) Fault { return Fault{kind: kindStatus, status: code} }

// Latency delays matching requests by d before forwarding them. The wait
// ends early if the client gives up.
func Latency(d time.Duration) Fault { return Fault{kind: kindLatency, delay: d} }

// ResetAfter forwards matching requests, sends the status line, the headers
// (with the registry's Content-Length, so the full body is promised) and the
// first n body bytes, then resets the connection (TCP RST: SO_LINGER 0 and
// close). The client sees ECONNRESET, or an unexpected EOF if it reads what
// arrived before the reset. A body of at most n bytes arrives whole (the
// fault still counts as fired). ggcr retries a connection reset only while it waits for the
// headers, never while it reads a body.
func ResetAfter(n int64) Fault { return Fault{kind: kindReset, n: n} }

// TruncateAfter is ResetAfter with an orderly close (TCP FIN) instead of a
// reset: the client reads the n bytes and then io.ErrUnexpectedEOF, since the
// headers promised more.
func TruncateAfter(n int64) Fault { return Fault{kind: kindTruncate, n: n} }

// FlipByte forwards matching requests and inverts (XOR 0xFF) the body byte
// at offset, so a blob no longer matches its digest while its size and
// headers still look right. If the body is shorter than offset+1 bytes and
// its length is known, the last byte is flipped; an empty body is left
// alone.
func FlipByte(offset int64) Fault { return Fault{kind: kindFlip, n: offset} }

// MutateJSON forwards matching requests, decodes the response body as a
// JSON object (numbers as json.Number), passes it to f to change in place,
// and sends the re-encoded result with a corrected Content-Length. The
// Docker-Content-Digest header is left as the registry sent it, so it names
// the original content. A body that is not a JSON object is sent unchanged.
// f may be called from several goroutines at once.
//
// Typical use: restrict it with Only(IsManifestGet) and change a layer's
// digest or size, or drop a layer.
func MutateJSON(f func(doc map[string]any)) Fault { return Fault{kind: kindMutate, mutate: f} }

// A Gate orders requests that a client sends at once, without a clock:
// HoldUntil holds requests until it is open, OpenAfter opens it once a
// request has been answered. A Gate opens once and stays open.
type Gate struct {
	once sync.Once
	open chan struct{}
}

// NewGate returns a closed gate.
func NewGate() *Gate { return &Gate{open: make(chan struct{})} }

// Open opens g, if it is not open yet. The requests it holds go on.
func (g *Gate) Open() { g.once.Do(func() { close(g.open) }) }

// Opened is closed once g is open.
func (g *Gate) Opened() <-chan struct{} { return g.open }

// HoldUntil holds matching requests until g is open, then goes on with
// them (the faults after it apply as usual). The wait ends early if the
// client gives up on the request, which then gets no answer.
//
// For instance, HoldUntil(g).Only(ping) with OpenAfter(g).Only(IsManifestGet)
// answers a client's GET /v2/ only after the manifest GET it sent beside
// it has been answered.
func HoldUntil(g *Gate) Fault { return Fault{kind: kindHold, gate: g} }

// OpenAfter forwards matching requests as usual and opens g once the first
// of them has been answered: its handler has returned, with the answer
// flushed to the client (or the connection cut, if a fault cut it).
func OpenAfter(g *Gate) Fault { return Fault{kind: kindOpen, gate: g} }

// Observe calls f with each matching request when the proxy receives it,
// and changes nothing: a test sees the requests' order and headers with
// it. Inject it before any Status fault, which ends the faults considered
// for a request it answers. f may be called from several goroutines at
// once; the request's body must not be read.
func Observe(f func(r *http.Request)) Fault { return Fault{kind: kindObserve, see: f} }

// Only restricts the fault to requests for which match returns true. Calling
// Only again adds a condition: all must hold. IsBlobGet, IsManifestGet,
// IsUpload and HasDigest are ready-made conditions.
func (f Fault) Only(match func(*http.Request) bool) Fault {
	f.match = append(f.match[:len(f.match):len(f.match)], match)
	return f
}

// Times limits the fault to the first n requests it applies to; n <= 0
// means no limit, which is the default.
func (f Fault) Times(n int) Fault {
	f.times = int64(max(n, 0))
	return f
}

// Rate applies the fault to a fraction p of the matching requests, chosen
// by a pseudo-random sequence that each Inject starts from the same seed, so
// a test that sends the same requests sees the same choices. p >= 1 (and the
// default, 0) means every matching request. With Times, the limit counts
// only the requests that the rate chose.
func (f Fault) Rate(p float64) Fault {
	f.rate = p
	return f
}

// String names the fault's kind, for logs.
func (f Fault) String() string { return kindNames[f.kind] }

// Injection is a Fault turned on in a Proxy.
type Injection struct {
	fault Fault

	mu      sync.Mutex
	fired   int64
	rng     *rand.Rand
	gone    bool
	changed chan struct{} // closed, and replaced, when fired grows
}

// Fired returns how many requests the fault has applied to so far.
func (in *Injection) Fired() int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.fired
}

// Await waits until the fault has applied to n requests (Fired() >= n),
// or ctx ends, whose error it then returns. A fault applies when the
// proxy has received the request, before it acts on it: a request held by
// Latency or HoldUntil is then in flight.
func (in *Injection) Await(ctx context.Context, n int64) error {
	for {
		in.mu.Lock()
		fired, changed := in.fired, in.changed
		in.mu.Unlock()
		if fired >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fire reports whether the fault applies to r, and counts it if so.
func (in *Injection) fire(r *http.Request) bool {
	for _, m := range in.fault.match {
		if !m(r) {
			return false
		}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.gone || (in.fault.times > 0 && in.fired >= in.fault.times) {
		return false
	}
	if p := in.fault.rate; p > 0 && p < 1 && in.rng.Float64() >= p {
		return false
	}
	in.fired++
	close(in.changed)
	in.changed = make(chan struct{})
	return true
}

// plan is what the faults that fired do to one request.
type plan struct {
	names   []string
	holds   []*Gate // HoldUntil
	opens   []*Gate // OpenAfter
	delay   time.Duration
	status  int
	cut     *Fault // ResetAfter or TruncateAfter
	rewrite []Fault
}

func (p *plan) empty() bool { return len(p.names) == 0 }

// errorCode is the registry error code that goes with an injected status.
func errorCode(r *http.Request, status int) string {
	switch {
	case status == http.StatusNotFound && strings.Contains(r.URL.Path, "/manifests/"):
		return "MANIFEST_UNKNOWN"
	case status == http.StatusNotFound:
		return "BLOB_UNKNOWN"
	case status == http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case status == http.StatusForbidden:
		return "DENIED"
	case status == http.StatusTooManyRequests:
		return "TOOMANYREQUESTS"
	case status >= 500:
		return "UNAVAILABLE"
	default:
		return "UNKNOWN"
	}
}

func writeStatus(w http.ResponseWriter, r *http.Request, status int) {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]any{{
		"code":    errorCode(r, status),
		"message": "regtest: injected fault",
	}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// rewriteResponse applies FlipByte and MutateJSON faults to a response
// on its way from the registry to the client.
func rewriteResponse(resp *http.Response, faults []Fault) error {
	for _, f := range faults {
		switch f.kind {
		case kindFlip:
			at := f.n
			if cl := resp.ContentLength; cl >= 0 && at >= cl {
				at = cl - 1
			}
			if at >= 0 && resp.ContentLength != 0 {
				resp.Body = &flipReader{ReadCloser: resp.Body, at: at}
			}
		case kindMutate:
			data, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			var doc map[string]any
			dec := json.NewDecoder(bytes.NewReader(data))
			dec.UseNumber()
			if err := dec.Decode(&doc); err == nil && doc != nil {
				f.mutate(doc)
				if out, err := json.Marshal(doc); err == nil {
					data = out
				}
			}
			resp.Body = io.NopCloser(bytes.NewReader(data))
			resp.ContentLength = int64(len(data))
			resp.Header.Set("Content-Length", strconv.Itoa(len(data)))
		}
	}
	return nil
}

// flipReader inverts the byte at offset at of the stream it reads.
type flipReader struct {
	io.ReadCloser
	at  int64
	pos int64
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if i := f.at - f.pos; i >= 0 && i < int64(n) {
		p[i] ^= 0xFF
	}
	f.pos += int64(n)
	return n, err
}

// errCut is what cutWriter returns once it has dropped the connection.
var errCut = errors.New("regtest: connection cut by injected fault")

// cutWriter lets the first limit body bytes through, then hijacks the
// connection and closes it: with a reset (SO_LINGER 0) if reset is set,
// else with an orderly FIN. It wraps the writer that counts bytes, so only
// bytes that reached the connection are counted.
type cutWriter struct {
	http.ResponseWriter
	limit   int64
	reset   bool
	written int64
	header  bool
	cut     bool
}

func (w *cutWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *cutWriter) WriteHeader(code int) {
	if w.header || w.cut {
		return
	}
	w.header = true
	w.ResponseWriter.WriteHeader(code)
	if w.limit <= 0 {
		w.doCut()
	}
}

func (w *cutWriter) Write(p []byte) (int, error) {
	if !w.header {
		w.WriteHeader(http.StatusOK)
	}
	if w.cut {
		return 0, errCut
	}
	room := w.limit - w.written
	if int64(len(p)) < room {
		n, err := w.ResponseWriter.Write(p)
		w.written += int64(n)
		return n, err
	}
	n, err := w.ResponseWriter.Write(p[:room])
	w.written += int64(n)
	w.doCut()
	if err == nil {
		err = errCut
	}
	return n, err
}

// FlushError lets http.ResponseController flush through the cut writer.
func (w *cutWriter) FlushError() error {
	if w.cut {
		return errCut
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *cutWriter) doCut() {
	w.cut = true
	rc := http.NewResponseController(w.ResponseWriter)
	// Hijack drops what the response buffers hold, so flush them first.
	_ = rc.Flush()
	conn, _, err := rc.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok && w.reset {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}
