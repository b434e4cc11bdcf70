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
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// The registry runs in a child process (role "registry"), so that its CPU
// time is not the client's: ggcr's registry.New(), blobs in memory, which
// keeps the disk out of the server side (every figure's disk work is the
// client's). It listens on two ports of 127.0.0.1: the registry itself,
// and a reverse proxy to it that sleeps latency before every request, as
// a far registry would. Its blob-byte counter is read over HTTP.

// Paths of the registry child's control endpoints.
const (
	countersPath = "/bench/counters"
	resetPath    = "/bench/reset"
)

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
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+countersPath, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(counters{Requests: requests.Load(), BlobGets: gets.Load(), BlobBytes: bytes.Load()})
	})
	mux.HandleFunc("POST "+resetPath, func(w http.ResponseWriter, r *http.Request) {
		requests.Store(0)
		gets.Store(0)
		bytes.Store(0)
	})
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha") {
			gets.Add(1)
			w = &countingWriter{ResponseWriter: w, n: &bytes}
		}
		reg.ServeHTTP(w, r)
	}))

	direct, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	slow, err := net.Listen("tcp", "127.0.0.1:0")
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
	}{{direct, mux}, {slow, delayed}} {
		srv := &http.Server{Handler: s.h, ReadHeaderTimeout: time.Minute}
		go srv.Serve(s.ln)
	}
	fmt.Printf("%s %s\n", direct.Addr(), slow.Addr())
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// countingWriter counts the body bytes of a response.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// registryProc is the parent's handle on the registry child.
type registryProc struct {
	host     string // direct: 127.0.0.1:PORT
	slowHost string // through the latency proxy
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
	var direct, slow string
	if err == nil {
		_, err = fmt.Sscan(line, &direct, &slow)
	}
	if err != nil {
		stdin.Close()
		cmd.Wait()
		return nil, fmt.Errorf("registry process did not report its address: %w", err)
	}
	return &registryProc{host: direct, slowHost: slow, cmd: cmd, stdin: stdin, client: &http.Client{Timeout: time.Minute}}, nil
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
