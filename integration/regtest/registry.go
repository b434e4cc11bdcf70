package regtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// readyTimeout bounds how long Start waits for GET /v2/ to answer. The
	// registry answers within tens of milliseconds; the slack is for a loaded
	// CI machine running several test binaries at once.
	readyTimeout = 30 * time.Second
	// portAttempts is how often Start picks a new port when the one it chose
	// was taken between choosing and binding.
	portAttempts = 5
	// logTail is how much of the registry's log a failed test prints.
	logTail = 32 << 10
)

// Registry is a CNCF distribution registry running as a child process.
//
// It listens on 127.0.0.1 without TLS or auth and stores blobs in Dir with
// the filesystem driver, with deletes enabled. Its stdout and stderr go to a
// log file that a failing test prints.
type Registry struct {
	// Addr is "127.0.0.1:PORT", the host part of references that name it
	// (Addr + "/repo:tag"). It stays the same across Stop and Restart.
	Addr string
	// Dir is the storage root. It outlives Stop, so Restart serves the
	// same content, and is removed with the test's temporary directory.
	Dir string

	t       testing.TB
	bin     string
	config  string
	logPath string
	remote  string // the upstream of a pull-through cache (Mirrors)

	mu   sync.Mutex
	proc *process // nil while stopped
}

// process is one run of the registry binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, set before done closes
}

// An Option changes how Start runs the registry.
type Option func(*Registry)

// Mirrors makes the registry a pull-through cache of the registry at
// remoteURL ("http://127.0.0.1:PORT"), as the distribution registry's
// proxy mode runs one: the `proxy: remoteurl:` key of its configuration.
// It then serves what it fetched from its own storage, asks the remote
// for a tag first and uses the tag it stored when the remote cannot be
// reached, and refuses pushes. One such registry mirrors one remote.
func Mirrors(remoteURL string) Option {
	return func(r *Registry) { r.remote = remoteURL }
}

// Start builds the registry if needed (see Build), starts it on a free port
// and returns once GET /v2/ answers 200. It fails t if any of that fails.
//
// The process is killed, and its log printed if t failed, when t's cleanup
// runs. If the process dies on its own before then, the test fails.
func Start(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	bin, err := Build(t.Context())
	if err != nil {
		t.Fatalf("building registry: %v", err)
	}
	dir := t.TempDir()
	r := &Registry{
		Dir:     filepath.Join(dir, "storage"),
		t:       t,
		bin:     bin,
		config:  filepath.Join(dir, "config.yml"),
		logPath: filepath.Join(dir, "registry.log"),
	}
	for _, o := range opts {
		o(r)
	}
	// Cleanups run last-registered first: stop the process, then print the
	// complete log.
	t.Cleanup(r.dumpLogOnFailure)
	t.Cleanup(r.cleanup)

	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			t.Fatalf("registry: %v", err)
		}
		err = r.start(addr)
		if err == nil {
			return r
		}
		// Someone else may have bound the port between freeAddr and the
		// registry's listen: try another.
		if attempt < portAttempts && strings.Contains(err.Error(), "address already in use") {
			continue
		}
		t.Fatalf("starting registry: %v", err)
	}
}

// URL returns "http://" + r.Addr.
func (r *Registry) URL() string { return "http://" + r.Addr }

// HasBlob reports whether the registry's storage links blob d ("sha256:...")
// into repository repo, which is what it serves the blob from. A
// pull-through cache (Mirrors) links a blob once it has stored the whole
// of it, so a test can wait for that without a clock. It reads the
// filesystem layout of the distribution registry.
func (r *Registry) HasBlob(repo, d string) bool {
	alg, hex, ok := strings.Cut(d, ":")
	if !ok {
		return false
	}
	_, err := os.Stat(filepath.Join(r.Dir, "docker", "registry", "v2", "repositories", filepath.FromSlash(repo), "_layers", alg, hex, "link"))
	return err == nil
}

// Stop kills the registry process (SIGKILL, as a crash or an unplugged
// network would) and waits until it has exited, after which connections to
// Addr are refused. Stopping a stopped registry does nothing. Content already
// pushed stays in Dir.
func (r *Registry) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopLocked()
}

// Restart stops the registry if it runs and starts it again on the same
// address and storage, returning once GET /v2/ answers. The error, if any,
// carries the tail of the registry's log.
func (r *Registry) Restart() error {
	r.Stop()
	if err := r.start(r.Addr); err != nil {
		return fmt.Errorf("restarting registry on %s: %w", r.Addr, err)
	}
	return nil
}

func (r *Registry) start(addr string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		return errors.New("registry already running")
	}
	if err := os.WriteFile(r.config, []byte(configYAML(addr, r.Dir, r.remote)), 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== regtest: %s serve %s (addr %s)\n", r.bin, r.config, addr)
	cmd := exec.Command(r.bin, "serve", r.config)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = registryEnv()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	// The child has its own copy of the descriptor.
	logf.Close()
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	r.proc = p
	r.Addr = addr

	if err := waitReady(addr, p); err != nil {
		r.stopLocked()
		return fmt.Errorf("%w\n%s", err, r.logTail())
	}
	return nil
}

func (r *Registry) stopLocked() {
	p := r.proc
	if p == nil {
		return
	}
	r.proc = nil
	_ = p.cmd.Process.Kill() // fails only if it already exited, which done tells
	<-p.done
}

// cleanup kills the process and fails the test if it had died on its own.
func (r *Registry) cleanup() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.proc; p != nil {
		select {
		case <-p.done:
			r.t.Errorf("registry on %s exited on its own during the test: %v", r.Addr, p.err)
		default:
		}
	}
	r.stopLocked()
}

func (r *Registry) dumpLogOnFailure() {
	if r.t.Failed() {
		r.t.Logf("registry log (%s):\n%s", r.logPath, r.logTail())
	}
}

// logTail returns the last logTail bytes of the registry's log.
func (r *Registry) logTail() string {
	data, err := os.ReadFile(r.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(data) > logTail {
		data = append([]byte("..."), data[len(data)-logTail:]...)
	}
	return string(data)
}

// waitReady polls GET /v2/ until the registry answers as a registry, p
// exits, or readyTimeout passes.
func waitReady(addr string, p *process) error {
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			// The header tells our registry from whatever else may have
			// grabbed the port.
			if resp.StatusCode == http.StatusOK && resp.Header.Get("Docker-Distribution-Api-Version") == "registry/2.0" {
				return nil
			}
			err = fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		last = err
		select {
		case <-p.done:
			return fmt.Errorf("registry exited before it was ready: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("registry not ready on %s after %v: %v", addr, readyTimeout, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// registryEnv is the environment of the registry process: ours without the
// variables that would reconfigure it.
func registryEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		// REGISTRY_* overrides any configuration key; OTEL_* configures
		// tracing, which is set off below.
		if strings.HasPrefix(kv, "REGISTRY_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	// The registry always sets up OpenTelemetry tracing; without these it
	// would try to export spans to an OTLP collector on localhost:4318.
	return append(env,
		"OTEL_TRACES_EXPORTER=none",
		"OTEL_METRICS_EXPORTER=none",
		"OTEL_LOGS_EXPORTER=none",
	)
}

// configYAML is the registry's configuration: filesystem storage under dir,
// deletes enabled, no auth, warnings and errors only, no access log; with
// remote set, a pull-through cache of it.
func configYAML(addr, dir, remote string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, `version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  # A fixed secret keeps upload state valid across Restart and silences
  # the warning about a generated one.
  secret: regtest-not-a-secret
`, dir, addr)
	if remote != "" {
		fmt.Fprintf(&b, "proxy:\n  remoteurl: %q\n", remote)
	}
	return b.String()
}
