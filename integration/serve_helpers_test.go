package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ocibuild/layercache/integration/regtest"
)

// Helpers of the tests of `layercache serve` (serve_test.go,
// conformance_test.go): the server as a process of its own, and the
// clients that talk to it (skopeo, crane, the conformance suite, plain
// HTTP).

// serveTimeout bounds how long a serve process may take to print its
// listening line, and to exit after SIGTERM. Only a failure guard: the
// tests wait on the line and on the exit, never on the clock.
const serveTimeout = 2 * time.Minute

// listeningLine is the first line `layercache serve` prints to stderr:
// "layercache serve: listening on http://HOST:PORT (cache DIR)".
var listeningLine = regexp.MustCompile(`listening on http://(\S+)`)

// server is one `layercache serve` process.
type server struct {
	t     *testing.T
	name  string
	cache string
	args  []string
	// Addr is the "host:port" the server listens on, from its first line.
	Addr string
	cmd  *exec.Cmd
	log  *lineLog
	done chan struct{}
	err  error // cmd.Wait's, once done is closed

	stopOnce sync.Once
}

// URL returns "http://" + s.Addr.
func (s *server) URL() string { return "http://" + s.Addr }

// startServe starts `layercache --cache-dir CACHE serve --addr 127.0.0.1:0
// ARGS...` and returns once it printed its listening line. At t's cleanup
// it is stopped with SIGTERM and must exit 0; its stderr is printed if t
// failed.
func startServe(t *testing.T, name, cache string, args ...string) *server {
	t.Helper()
	r := newRunner(t, name) // the command and an environment without the user's configuration
	s := &server{t: t, name: name, cache: cache, args: args, log: newLineLog(), done: make(chan struct{})}
	// Not CommandContext: t's context ends before its cleanups run, and the
	// cleanup must be the one that stops the process, with SIGTERM.
	s.cmd = exec.Command(r.cli, append([]string{"--cache-dir", cache, "serve", "--addr", "127.0.0.1:0"}, args...)...)
	s.cmd.Env = r.env
	// Its working directory is the cache's parent, a folder of the test's
	// own, so that a relative path it were tricked into writing lands
	// where a test can look.
	s.cmd.Dir = filepath.Dir(cache)
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("%s: starting layercache serve: %v", name, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("%s: layercache serve %s output:\n%s", name, strings.Join(args, " "), s.log)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), serveTimeout)
	defer cancel()
	line, err := s.log.wait(ctx, s.done, listeningLine)
	if err != nil {
		t.Fatalf("%s: layercache serve %s printed no listening line: %v (exit: %v)\n%s", name, strings.Join(args, " "), err, s.exitErr(), s.log)
	}
	s.Addr = listeningLine.FindStringSubmatch(line)[1]
	return s
}

// exitErr returns the process's exit error if it has exited, or nil.
func (s *server) exitErr() error {
	select {
	case <-s.done:
		return fmt.Errorf("exited: %v", s.err)
	default:
		return nil
	}
}

// Stop sends SIGTERM and waits for the process to exit, failing t unless
// it exits 0 within serveTimeout (it is then killed). Stopping a stopped
// server does nothing.
func (s *server) Stop() {
	s.t.Helper()
	s.stopOnce.Do(func() {
		select {
		case <-s.done:
			s.t.Errorf("%s: layercache serve exited before it was stopped: %v", s.name, s.err)
			return
		default:
		}
		if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			s.t.Errorf("%s: SIGTERM: %v", s.name, err)
		}
		select {
		case <-s.done:
			if s.err != nil {
				s.t.Errorf("%s: layercache serve exited with %v after SIGTERM, want exit 0", s.name, s.err)
			}
		case <-time.After(serveTimeout):
			_ = s.cmd.Process.Kill()
			<-s.done
			s.t.Errorf("%s: layercache serve still running %v after SIGTERM; killed", s.name, serveTimeout)
		}
	})
}

// lineLog collects a process's output and lets a test wait for a line.
type lineLog struct {
	mu      sync.Mutex
	buf     []byte
	lines   []string
	pending string        // the start of a line not yet ended
	changed chan struct{} // closed and replaced on every new line
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	l.pending += string(p)
	n := len(l.lines)
	for {
		i := strings.IndexByte(l.pending, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, l.pending[:i])
		l.pending = l.pending[i+1:]
	}
	if len(l.lines) > n {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return len(p), nil
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

// wait returns the first line that matches re, waiting for it until ctx
// ends or exited is closed (the writer's process is gone).
func (l *lineLog) wait(ctx context.Context, exited <-chan struct{}, re *regexp.Regexp) (string, error) {
	lines, err := l.waitN(ctx, exited, re, 1)
	if err != nil {
		return "", err
	}
	return lines[0], nil
}

// waitN returns the first n lines that match re, waiting for them as
// wait does.
func (l *lineLog) waitN(ctx context.Context, exited <-chan struct{}, re *regexp.Regexp, n int) ([]string, error) {
	for {
		l.mu.Lock()
		var found []string
		for _, line := range l.lines {
			if re.MatchString(line) {
				if found = append(found, line); len(found) == n {
					break
				}
			}
		}
		changed := l.changed
		l.mu.Unlock()
		if len(found) == n {
			return found, nil
		}
		select {
		case <-changed:
		case <-exited:
			// The lines written before the exit are all in: look once more.
			select {
			case <-changed:
				continue
			default:
			}
			return found, fmt.Errorf("the process exited after %d of %d lines matching %s", len(found), n, re)
		case <-ctx.Done():
			return found, fmt.Errorf("%d of %d lines matching %s: %w", len(found), n, re, ctx.Err())
		}
	}
}

// toolBin returns the path of tool's binary (regtest.BuildTool).
func toolBin(t *testing.T, tool regtest.Tool) string {
	t.Helper()
	bin, err := regtest.BuildTool(t.Context(), tool)
	if err != nil {
		t.Fatalf("building %s: %v", tool.Name, err)
	}
	return bin
}

// skopeoBin returns skopeo's path. Without skopeo the test is skipped,
// except under CI=true, where a missing skopeo is a broken set-up
// (.ci/install-deps.sh installs it) and fails the test.
func skopeoBin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("skopeo")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("skopeo is not on PATH, and CI=true: %v", err)
		}
		t.Skipf("skopeo is not on PATH (make test installs it with .ci/install-deps.sh): %v", err)
	}
	return bin
}

// runTool runs a client command to its end and returns its stdout,
// failing t with its stderr if it does not exit 0.
func runTool(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	out, err := tryTool(t, bin, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

func tryTool(t *testing.T, bin string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// No proxies, no user configuration: the clients talk to 127.0.0.1.
	home := t.TempDir()
	cmd.Env = append(cleanEnv(), "HOME="+home, "DOCKER_CONFIG="+home+"/.docker", "XDG_RUNTIME_DIR="+home, "XDG_CONFIG_HOME="+home+"/.config")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v\nstderr:\n%s", bin, strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// cleanEnv is the environment without the variables that would point a
// client at a proxy, a cache or a user's configuration.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "LAYERCACHE_") || k == "OCIBUILD_CACHE_DIR" || k == "DOCKER_CONFIG" || k == "HOME" ||
			k == "XDG_RUNTIME_DIR" || k == "XDG_CONFIG_HOME" || k == "REGISTRY_AUTH_FILE" ||
			strings.EqualFold(k, "HTTP_PROXY") || strings.EqualFold(k, "HTTPS_PROXY") || strings.EqualFold(k, "ALL_PROXY") ||
			strings.HasPrefix(k, "OCI_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// httpClient returns a client that talks to 127.0.0.1 directly, whose
// connections are closed at t's cleanup.
func httpClient(t *testing.T) *http.Client {
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: serveTimeout}
}

// specErrorCodes are the error codes of the OCI distribution spec
// (spec.md, "Error Codes").
var specErrorCodes = map[string]bool{
	"BLOB_UNKNOWN": true, "BLOB_UPLOAD_INVALID": true, "BLOB_UPLOAD_UNKNOWN": true,
	"DIGEST_INVALID": true, "MANIFEST_BLOB_UNKNOWN": true, "MANIFEST_INVALID": true,
	"MANIFEST_UNKNOWN": true, "NAME_INVALID": true, "NAME_UNKNOWN": true,
	"SIZE_INVALID": true, "UNAUTHORIZED": true, "DENIED": true,
	"UNSUPPORTED": true, "TOOMANYREQUESTS": true,
}

// errorCode returns errors[0].code of a distribution-spec error body, or
// "" with a description of what the body is instead.
func errorCode(body []byte) (string, string) {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return "", fmt.Sprintf("not a JSON error body (%v): %.200q", err, body)
	}
	if len(e.Errors) == 0 || e.Errors[0].Code == "" {
		return "", fmt.Sprintf("no errors[0].code in %.200q", body)
	}
	return e.Errors[0].Code, ""
}
