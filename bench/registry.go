package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// The registry runs in a child process (role "registry"), so that its CPU
// time is not the client's: ggcr's registry.New(), blobs in memory, which
// keeps the disk out of the server side (every figure's disk work is the
// client's). It listens on two ports of 127.0.0.1: the registry itself,
// and a reverse proxy to it that sleeps latency before every request, as
// a far registry would. Its blob-byte counter is read over HTTP. A third
// port serves the registry with its blob responses cut at set fractions of
// the blob (cutPath): the first response of a blob at the first fraction,
// the second at the second, and so on, as a flaky network would.

// Paths of the registry child's control endpoints.
const (
	countersPath = "/bench/counters"
	resetPath    = "/bench/reset"
	// waitPath?bytes=N answers once the blob bytes served since the last
	// reset reach N: a point in a download, found without a clock.
	waitPath = "/bench/wait"
	// cutPath?at=0.3,0.7 sets the fractions at which the cut port cuts
	// the successive responses of each blob (blobs of cutMinSize or more).
	cutPath = "/bench/cut"
)

// cutMinSize: smaller blobs (configs) are never cut.
const cutMinSize = 1 << 20

// counters are what the registry child counts: requests (of the proxy's
// too, which it forwards), blob GET responses and their body bytes.
type counters struct {
	Requests  int64 `json:"requests"`
	BlobGets  int64 `json:"blobGets"`
	BlobBytes int64 `json:"blobBytes"`
}

// registryRole serves until its stdin closes (the parent exits or closes
// the pipe).
func registryRole(latency time.Duration) error {
	var requests, gets, bytes atomic.Int64
	cuts := &cutter{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+countersPath, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(counters{Requests: requests.Load(), BlobGets: gets.Load(), BlobBytes: bytes.Load()})
	})
	mux.HandleFunc("POST "+resetPath, func(w http.ResponseWriter, r *http.Request) {
		requests.Store(0)
		gets.Store(0)
		bytes.Store(0)
		cuts.reset(nil)
	})
	mux.HandleFunc("GET "+waitPath, func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		deadline := time.Now().Add(time.Minute)
		for bytes.Load() < n {
			if time.Now().After(deadline) || r.Context().Err() != nil {
				http.Error(w, fmt.Sprintf("%d of %d bytes served", bytes.Load(), n), http.StatusGatewayTimeout)
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	mux.HandleFunc("POST "+cutPath, func(w http.ResponseWriter, r *http.Request) {
		var at []float64
		for _, f := range strings.Split(r.URL.Query().Get("at"), ",") {
			v, err := strconv.ParseFloat(f, 64)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			at = append(at, v)
		}
		cuts.reset(at)
	})
	serve := func(cut bool) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha") {
				gets.Add(1)
				raw := w
				w = &countingWriter{ResponseWriter: w, n: &bytes}
				if cut {
					w = cuts.writer(raw, w, r.URL.Path)
				}
			}
			reg.ServeHTTP(w, r)
		})
	}
	mux.Handle("/", serve(false))

	direct, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	slow, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cutLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	target := &url.URL{Scheme: "http", Host: direct.Addr().String()}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	delayed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(latency)
		proxy.ServeHTTP(w, r)
	})
	for _, s := range []struct {
		ln net.Listener
		h  http.Handler
	}{{direct, mux}, {slow, delayed}, {cutLn, serve(true)}} {
		srv := &http.Server{Handler: s.h, ReadHeaderTimeout: time.Minute}
		go srv.Serve(s.ln)
	}
	fmt.Printf("%s %s %s\n", direct.Addr(), slow.Addr(), cutLn.Addr())
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// countingWriter counts the body bytes of a response.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

// Write writes p in chunks of countChunk, so that the count follows the
// body as it goes out: ggcr's registry writes a blob with one Write.
func (w *countingWriter) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		k, err := w.ResponseWriter.Write(p[:min(len(p), countChunk)])
		n += k
		w.n.Add(int64(k))
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// countChunk is the resolution of the blob byte count.
const countChunk = 256 << 10

// registryProc is the parent's handle on the registry child.
type registryProc struct {
	host     string // direct: 127.0.0.1:PORT
	slowHost string // through the latency proxy
	cutHost  string // blob responses cut (setCuts)
	cmd      *exec.Cmd
	stdin    io.Closer
	client   *http.Client
}

func startRegistry(ctx context.Context, latency time.Duration) (*registryProc, error) {
	cmd, err := roleCommand(ctx, "registry", latency.String())
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the registry process: %w", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	var direct, slow, cut string
	if err == nil {
		_, err = fmt.Sscan(line, &direct, &slow, &cut)
	}
	if err != nil {
		stdin.Close()
		cmd.Wait()
		return nil, fmt.Errorf("registry process did not report its address: %w", err)
	}
	return &registryProc{host: direct, slowHost: slow, cutHost: cut, cmd: cmd, stdin: stdin, client: &http.Client{Timeout: time.Minute}}, nil
}

// counters returns the blob counters since the last reset.
func (r *registryProc) counters() (counters, error) {
	var c counters
	resp, err := r.client.Get("http://" + r.host + countersPath)
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	return c, json.NewDecoder(resp.Body).Decode(&c)
}

func (r *registryProc) reset() error {
	resp, err := r.client.Post("http://"+r.host+resetPath, "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// waitBytes returns once the registry has served n blob bytes since the
// last reset.
func (r *registryProc) waitBytes(ctx context.Context, n int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s%s?bytes=%d", r.host, waitPath, n), nil)
	if err != nil {
		return err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("waiting for %d blob bytes served: %s: %s", n, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// setCuts sets the fractions of a blob at which the cut port cuts its
// successive responses, and forgets the responses counted so far.
func (r *registryProc) setCuts(at ...float64) error {
	var s []string
	for _, f := range at {
		s = append(s, strconv.FormatFloat(f, 'f', -1, 64))
	}
	resp, err := r.client.Post(fmt.Sprintf("http://%s%s?at=%s", r.host, cutPath, strings.Join(s, ",")), "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("setting cuts: %s", resp.Status)
	}
	return nil
}

// stop ends the registry child and waits for it, so that its CPU time
// lands in the harness's rusage of children.
func (r *registryProc) stop() error {
	r.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		return <-done
	}
}

// cutter cuts the successive responses of each blob on the cut port: the
// k-th response of a blob ends abruptly once it has sent the blob up to
// fraction at[k] of its size (counted from the blob's first byte, so a
// resumed request is cut at the same place in the blob). Responses past
// the last fraction are served whole.
type cutter struct {
	mu        sync.Mutex
	at        []float64
	responses map[string]int // blob path → responses begun
}

// reset forgets the responses counted; at, if not nil, replaces the
// fractions.
func (c *cutter) reset(at []float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if at != nil {
		c.at = at
	}
	c.responses = map[string]int{}
}

// writer wraps w (counting) for a response of the blob at path; raw is
// the connection's own writer, flushed before the cut.
func (c *cutter) writer(raw, w http.ResponseWriter, path string) http.ResponseWriter {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.responses[path]
	c.responses[path] = k + 1
	if k >= len(c.at) {
		return w
	}
	return &cutWriter{ResponseWriter: w, raw: raw, at: c.at[k], limit: -1}
}

// cutWriter ends a response once the blob has been sent up to fraction
// at of its size: it writes up to there, flushes, and aborts the
// handler, which closes the connection mid-body.
type cutWriter struct {
	http.ResponseWriter
	raw     http.ResponseWriter
	at      float64
	limit   int64 // body bytes this response sends before the cut; -1: no cut
	written int64
}

func (w *cutWriter) WriteHeader(code int) {
	h := w.Header()
	var start, total int64 = 0, -1
	switch code {
	case http.StatusOK:
		total, _ = strconv.ParseInt(h.Get("Content-Length"), 10, 64)
	case http.StatusPartialContent:
		var end int64
		if _, err := fmt.Sscanf(h.Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &total); err != nil {
			total = -1
		}
	}
	if total >= cutMinSize {
		if cut := int64(w.at * float64(total)); cut > start {
			w.limit = cut - start
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *cutWriter) Write(p []byte) (int, error) {
	if w.limit < 0 || w.written+int64(len(p)) <= w.limit {
		n, err := w.ResponseWriter.Write(p)
		w.written += int64(n)
		return n, err
	}
	w.ResponseWriter.Write(p[:w.limit-w.written])
	http.NewResponseController(w.raw).Flush()
	panic(http.ErrAbortHandler)
}
