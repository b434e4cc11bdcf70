package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/ocibuild/layercache/internal/testutil"
)

// serveUpstream is ggcr's registry behind a handler that counts requests
// and can hold a blob's body halfway until released.
type serveUpstream struct {
	srv  *httptest.Server
	host string
	reg  http.Handler

	mu       sync.Mutex
	requests int
	blobGets int
	hold     map[string]chan struct{}
	held     chan string
}

func newServeUpstream(t *testing.T) *serveUpstream {
	t.Helper()
	u := &serveUpstream{
		reg:  registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		hold: map[string]chan struct{}{},
		held: make(chan string, 8),
	}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	u.host = strings.TrimPrefix(u.srv.URL, "http://")
	return u
}

func (u *serveUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := strings.LastIndex(r.URL.Path, "/blobs/sha256:")
	u.mu.Lock()
	u.requests++
	var release chan struct{}
	if r.Method == http.MethodGet && i >= 0 {
		u.blobGets++
		release = u.hold[r.URL.Path[i+len("/blobs/"):]]
	}
	u.mu.Unlock()
	if release == nil {
		u.reg.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	u.reg.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(rec.Code)
	w.Write(body[:len(body)/2])
	w.(http.Flusher).Flush()
	u.held <- r.URL.Path
	select {
	case <-release:
		w.Write(body[len(body)/2:])
	case <-r.Context().Done():
	}
}

func (u *serveUpstream) counts() (requests, blobGets int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.requests, u.blobGets
}

func (u *serveUpstream) reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.requests, u.blobGets = 0, 0
}

func (u *serveUpstream) push(t *testing.T, repoTag string, size, layers int64) v1.Image {
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
	u.reset()
	return img
}

// serveProc is a `layercache serve` process.
type serveProc struct {
	cmd  *exec.Cmd
	addr string // HOST:PORT it listens on
	done chan struct{}

	mu      sync.Mutex
	lines   []string      // of stderr
	changed chan struct{} // closed, and replaced, when a line comes
}

var listeningLine = regexp.MustCompile(`^layercache serve: listening on http://(\S+) \(cache (.+)\)$`)

// startServe runs `layercache --cache-dir DIR serve --addr 127.0.0.1:0
// ARGS...` in workDir, and returns once it printed its listening line,
// which must be its first.
func startServe(t *testing.T, workDir, cacheDir string, args ...string) *serveProc {
	t.Helper()
	return startServeAddr(t, workDir, cacheDir, "127.0.0.1:0", args...)
}

// startServeAddr is startServe listening on addr.
func startServeAddr(t *testing.T, workDir, cacheDir, addr string, args ...string) *serveProc {
	t.Helper()
	bin, err := exec.LookPath("layercache")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"--cache-dir", cacheDir, "serve", "--addr", addr}, args...)...)
	cmd.Dir = workDir
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serveProc{cmd: cmd, done: make(chan struct{}), changed: make(chan struct{})}
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			if len(p.lines) == 0 {
				first <- sc.Text()
			}
			p.lines = append(p.lines, sc.Text())
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		close(first)
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	line, ok := <-first
	if !ok {
		<-p.done
		t.Fatalf("serve exited before it listened: %v\n%s", cmd.ProcessState, p.stderr())
	}
	m := listeningLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("first stderr line %q is not the listening line", line)
	}
	if m[2] != cacheDir {
		t.Errorf("listening line names cache %s, want %s", m[2], cacheDir)
	}
	p.addr = m[1]
	return p
}

// waitFor waits until a line of stderr holds s; false if serve exited
// first.
func (p *serveProc) waitFor(s string) bool {
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if strings.Contains(l, s) {
				p.mu.Unlock()
				return true
			}
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.done:
			return strings.Contains(p.stderr(), s)
		}
	}
}

func (p *serveProc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// do sends a request to the server and returns the answer, body read.
func (p *serveProc) do(t *testing.T, method, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return testutil.Do(t, method, "http://"+p.addr+path, hdr...)
}

// stop sends sig and returns the exit code.
func (p *serveProc) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("serve still runs 60 s after %v", sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

// pullThrough pulls ref through the server with ggcr and checks it is img.
func pullThrough(t *testing.T, p *serveProc, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(p.addr + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pulling %s through serve: %v", ref, err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("pulled %s: %v", ref, err)
	}
	gd, _ := got.Digest()
	wd, _ := img.Digest()
	if gd != wd {
		t.Errorf("pulled %s with digest %s, want %s", ref, gd, wd)
	}
}

// TestServe_WarmedImageOffline serves an image that warm put in the cache,
// with the upstream never asked.
func TestServe_WarmedImageOffline(t *testing.T) {
	t.Parallel()
	up := newServeUpstream(t)
	img := up.push(t, "test/img:v1", 8192, 2)
	cache := filepath.Join(t.TempDir(), "cache")
	mustRun(t, "--cache-dir", cache, "warm", up.host+"/test/img:v1")
	up.reset()

	p := startServe(t, t.TempDir(), cache, "--upstream", up.host, "--offline")
	pullThrough(t, p, "test/img:v1", img)
	if n, _ := up.counts(); n != 0 {
		t.Errorf("%d requests upstream, want 0 (offline)", n)
	}
	if !strings.Contains(p.stderr(), "cache=hit") {
		t.Errorf("access log has no hit:\n%s", p.stderr())
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0\n%s", code, p.stderr())
	}
}

// TestServe_PullThrough pulls a miss through serve, then again from the
// cache; ns and path-prefix routing reach the same upstream.
func TestServe_PullThrough(t *testing.T) {
	t.Parallel()
	up := newServeUpstream(t)
	img := up.push(t, "test/img:v1", 8192, 3)
	cache := filepath.Join(t.TempDir(), "cache")
	p := startServe(t, t.TempDir(), cache, "--upstream", up.host, "--json")

	pullThrough(t, p, "test/img:v1", img)
	if _, gets := up.counts(); gets != 4 {
		t.Errorf("first pull: %d blob GETs upstream, want 4", gets)
	}
	up.reset()
	pullThrough(t, p, "test/img:v1", img)
	if _, gets := up.counts(); gets != 0 {
		t.Errorf("second pull: %d blob GETs upstream, want 0", gets)
	}
	want, _ := img.Digest()
	for _, path := range []string{
		"/v2/test/img/manifests/v1?ns=" + up.host,
		"/v2/" + up.host + "/test/img/manifests/v1",
	} {
		resp, body := p.do(t, http.MethodGet, path)
		if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() {
			t.Errorf("GET %s: %s %s", path, resp.Status, body)
		}
	}
	// --json: one JSON object per access log line.
	for _, line := range strings.Split(p.stderr(), "\n")[1:] {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("--json access log line %q: %v", line, err)
		}
	}
	if code := p.stop(t, syscall.SIGINT); code != 0 {
		t.Errorf("exit %d after SIGINT, want 0", code)
	}
}

// TestServe_SIGTERMDrainsInFlight sends SIGTERM while a blob is half
// sent: the client still gets the whole blob, and serve exits 0.
func TestServe_SIGTERMDrainsInFlight(t *testing.T) {
	t.Parallel()
	up := newServeUpstream(t)
	img := up.push(t, "test/img:v1", 1<<20, 1)
	l, _ := img.Layers()
	h, _ := l[0].Digest()
	rc, _ := l[0].Compressed()
	blob, _ := io.ReadAll(rc)
	release := make(chan struct{})
	up.mu.Lock()
	up.hold[h.String()] = release
	up.mu.Unlock()
	cache := filepath.Join(t.TempDir(), "cache")
	p := startServe(t, t.TempDir(), cache, "--upstream", up.host)

	type result struct {
		body []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + p.addr + "/v2/test/img/blobs/" + h.String())
		if err != nil {
			got <- result{nil, err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- result{b, err}
	}()
	<-up.held
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// serve says it shuts down before the held body goes on.
	if !p.waitFor("shutting down") {
		t.Fatalf("serve exited with a response in flight:\n%s", p.stderr())
	}
	select {
	case <-p.done:
		t.Fatalf("serve exited with a response in flight:\n%s", p.stderr())
	default:
	}
	close(release)
	r := <-got
	if r.err != nil || !bytes.Equal(r.body, blob) {
		t.Errorf("in-flight blob: %d bytes, %v; want the whole blob", len(r.body), r.err)
	}
	<-p.done
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0\n%s", code, p.stderr())
	}
	code, out, _ := runCLI(t, "", "--cache-dir", cache, "verify")
	if code != 0 {
		t.Errorf("verify after shutdown: exit %d\n%s", code, out)
	}
}

// TestServe_Hostile sends requests no client should; each gets a spec
// error code, and nothing changes outside the cache (nor, for these, in
// it).
func TestServe_Hostile(t *testing.T) {
	t.Parallel()
	up := newServeUpstream(t)
	up.push(t, "test/img:v1", 1024, 1)
	work := t.TempDir()
	cache := filepath.Join(work, "cache")
	p := startServe(t, work, cache, "--upstream", up.host)
	zero := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		name   string
		method string
		path   string
		hdr    []string
		status int
		code   string
	}{
		// Path tricks in names, plain and escaped.
		{"dot dot", "GET", "/v2/a/../../../etc/manifests/v1", nil, 400, "NAME_INVALID"},
		{"escaped dot dot", "GET", "/v2/a/%2e%2e/%2e%2e/etc/blobs/" + zero, nil, 400, "NAME_INVALID"},
		{"escaped slash", "GET", "/v2/a%2f..%2fb/manifests/v1", nil, 400, "NAME_INVALID"},
		// Path tricks in digests.
		{"digest dot dot", "GET", "/v2/test/img/blobs/sha256:..%2f..%2fetc%2fpasswd", nil, 400, "DIGEST_INVALID"},
		{"digest short", "GET", "/v2/test/img/blobs/sha256:abc", nil, 400, "DIGEST_INVALID"},
		{"digest algorithm", "GET", "/v2/test/img/manifests/sha1:" + strings.Repeat("0", 40), nil, 400, "DIGEST_INVALID"},
		// A malformed ns.
		{"ns path", "GET", "/v2/test/img/manifests/v1?ns=..%2f..", nil, 400, "NAME_INVALID"},
		{"ns userinfo", "GET", "/v2/test/img/manifests/v1?ns=user@evil.com", nil, 400, "NAME_INVALID"},
		// A Range past the end of a blob.
		{"range past end", "GET", "", []string{"Range", "bytes=99999999-"}, 416, "SIZE_INVALID"},
		// Writes of every kind.
		{"put manifest", "PUT", "/v2/test/img/manifests/v2", nil, 405, "UNSUPPORTED"},
		{"start upload", "POST", "/v2/test/img/blobs/uploads/", nil, 405, "UNSUPPORTED"},
		{"delete blob", "DELETE", "/v2/test/img/blobs/" + zero, nil, 405, "UNSUPPORTED"},
	}
	// The Range row asks for a blob the upstream has.
	layers := func() string {
		resp, body := p.do(t, "GET", "/v2/test/img/manifests/v1")
		if resp.StatusCode != 200 {
			t.Fatalf("manifest: %s %s", resp.Status, body)
		}
		m, err := v1.ParseManifest(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		return m.Layers[0].Digest.String()
	}()
	before := tree(t, work, cache)
	for _, tc := range tests {
		path := tc.path
		if path == "" {
			path = "/v2/test/img/blobs/" + layers
		}
		resp, body := p.do(t, tc.method, path, tc.hdr...)
		if resp.StatusCode != tc.status || testutil.SpecErrorCode(body) != tc.code {
			t.Errorf("%s: %s %s: %s %s, want %d %s", tc.name, tc.method, path, resp.Status, body, tc.status, tc.code)
		}
	}
	// A header over the bound: net/http refuses it before serve's
	// handler, with 431.
	resp, _ := p.do(t, "GET", "/v2/", "X-Huge", strings.Repeat("a", 128<<10))
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("huge header: %s, want 431", resp.Status)
	}
	if after := tree(t, work, cache); !slices.Equal(before, after) {
		t.Errorf("files outside the cache changed:\nbefore %v\nafter  %v", before, after)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
}

// tree lists the files under dir, leaving out skip.
func tree(t *testing.T, dir, skip string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == skip {
			return filepath.SkipDir
		}
		out = append(out, path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestServe_PrintConfig checks that each snippet parses and points at
// --addr.
func TestServe_PrintConfig(t *testing.T) {
	t.Parallel()
	addr := "127.0.0.1:5099"
	for _, kind := range printConfigKinds {
		t.Run(kind, func(t *testing.T) {
			code, out, errOut := runCLI(t, "", "serve", "--addr", addr, "--print-config", kind)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var v map[string]any
			if kind == "docker" {
				if err := json.Unmarshal([]byte(out), &v); err != nil {
					t.Fatalf("daemon.json does not parse: %v\n%s", err, out)
				}
				if !strings.Contains(errOut, "docker.io only") {
					t.Errorf("stderr does not say docker mirrors docker.io only: %q", errOut)
				}
			} else if _, err := toml.Decode(out, &v); err != nil {
				t.Fatalf("%s does not parse as TOML: %v\n%s", kind, err, out)
			}
			if !strings.Contains(out, addr) {
				t.Errorf("%s config does not name %s:\n%s", kind, addr, out)
			}
			switch kind {
			case "containerd":
				host, _ := v["host"].(map[string]any)["http://"+addr].(map[string]any)
				if caps := fmt.Sprint(host["capabilities"]); caps != "[pull resolve]" {
					t.Errorf("hosts.toml capabilities %s, want [pull resolve]:\n%s", caps, out)
				}
			case "buildkit":
				reg, _ := v["registry"].(map[string]any)
				if fmt.Sprint(reg["docker.io"]) != "map[mirrors:["+addr+"]]" || fmt.Sprint(reg[addr]) != "map[http:true]" {
					t.Errorf("buildkitd.toml: %v", reg)
				}
			case "podman":
				regs, _ := v["registry"].([]map[string]any)
				if len(regs) != 1 || regs[0]["prefix"] != "docker.io" || fmt.Sprint(regs[0]["mirror"]) != "[map[insecure:true location:"+addr+"/docker.io]]" {
					t.Errorf("registries.conf: %v", v)
				}
			}
		})
	}
	// An unknown kind, and a port that is not known yet, are usage errors.
	for _, args := range [][]string{
		{"serve", "--print-config", "rkt"},
		{"serve", "--addr", "127.0.0.1:0", "--print-config", "containerd"},
		{"serve", "--upstream", "registry.local:5000", "--print-config", "docker"},
	} {
		if code, _, _ := runCLI(t, "", args...); code != exitUsage {
			t.Errorf("layercache %s: exit %d, want %d", strings.Join(args, " "), code, exitUsage)
		}
	}
}

// TestServe_NonLoopbackWarns checks the warning for an --addr that is not
// loopback, printed after the listening line, which stays the first line
// of stderr with -v.
func TestServe_NonLoopbackWarns(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("layercache")
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(t.TempDir(), "cache")
	// A bad --upstream fails before anything listens: exit 2.
	cmd := exec.Command(bin, "--cache-dir", cache, "serve", "--addr", "127.0.0.1:0", "--upstream", "a/b")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	if err := cmd.Run(); cmd.ProcessState.ExitCode() != exitUsage {
		t.Errorf("--upstream a/b: %v, want exit %d", err, exitUsage)
	}
	// -v: debug lines come before the listening line is written, and
	// are held back until it is out (startServe checks it is first).
	p := startServeAddr(t, t.TempDir(), cache, "0.0.0.0:0", "-v")
	if !p.waitFor("not a loopback address") {
		t.Errorf("no warning for 0.0.0.0:\n%s", p.stderr())
	}
	p.stop(t, syscall.SIGTERM)
}

// TestServe_ClientCutThenRestart kills serve while a client it lost is
// still half-downloaded: nothing is committed, and the next serve gets the
// blob whole.
func TestServe_ClientCutThenRestart(t *testing.T) {
	t.Parallel()
	up := newServeUpstream(t)
	img := up.push(t, "test/img:v1", 1<<20, 1)
	l, _ := img.Layers()
	h, _ := l[0].Digest()
	rc, _ := l[0].Compressed()
	blob, _ := io.ReadAll(rc)
	up.mu.Lock()
	up.hold[h.String()] = make(chan struct{}) // never released
	up.mu.Unlock()
	cache := filepath.Join(t.TempDir(), "cache")
	p := startServe(t, t.TempDir(), cache, "--upstream", up.host)

	resp, err := http.Get("http://" + p.addr + "/v2/test/img/blobs/" + h.String())
	if err != nil {
		t.Fatal(err)
	}
	<-up.held
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the client goes away
	p.cmd.Process.Kill()
	<-p.done
	file := filepath.Join(cache, "blobs", h.Algorithm, h.Hex)
	if _, err := os.Lstat(file); !os.IsNotExist(err) {
		t.Fatalf("after a kill mid-blob, %s: %v, want no file", file, err)
	}

	up.mu.Lock()
	delete(up.hold, h.String())
	up.mu.Unlock()
	p = startServe(t, t.TempDir(), cache, "--upstream", up.host)
	resp2, body := p.do(t, http.MethodGet, "/v2/test/img/blobs/"+h.String())
	if resp2.StatusCode != 200 || !bytes.Equal(body, blob) {
		t.Errorf("after the restart: %s, %d bytes; want the blob whole", resp2.Status, len(body))
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	if code, out, errOut := runCLI(t, "", "--cache-dir", cache, "verify"); code != 0 {
		t.Errorf("verify: exit %d\n%s%s", code, out, errOut)
	}
}
