package main

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
	"syscall"
	"time"
)

// The fleet tier of issue 15: a pull-through registry mirror in front of
// the registry child. It is the CNCF distribution registry in proxy mode
// (proxy.remoteurl) when its binary is there: the one integration/regtest
// builds into <user cache dir>/layercache/registry/<version>-<key>/registry
// (`make deps`), or the one $LAYERCACHE_REGISTRY_BIN names. Otherwise it is
// the harness's own minimal pull-through mirror (role "mirror"), and the
// rows say so.

// distributionVersion is the release integration/go.mod pins.
const distributionVersion = "v3.1.2"

// registryBinEnv names the distribution binary to use, as in regtest.
const registryBinEnv = "LAYERCACHE_REGISTRY_BIN"

// findDistribution returns the distribution registry binary, or "" if
// there is none.
func findDistribution() string {
	if bin := os.Getenv(registryBinEnv); bin != "" {
		if _, err := os.Stat(bin); err == nil {
			return bin
		}
		return ""
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	found, _ := filepath.Glob(filepath.Join(dir, "layercache", "registry", distributionVersion+"-*", "registry"))
	var best string
	var bestTime time.Time
	for _, f := range found {
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() && fi.ModTime().After(bestTime) {
			best, bestTime = f, fi.ModTime()
		}
	}
	return best
}

// mirrorProc is a pull-through mirror of one upstream, in a process.
type mirrorProc struct {
	addr     string // 127.0.0.1:PORT
	storage  string // distribution's storage root; "" for the harness's mirror
	cmd      *exec.Cmd
	stdin    io.Closer
	done     chan struct{}
	distrib  bool
	upstream string
}

// mirrorKind says which mirror the harness runs, for the rows.
func (b *bench) mirrorKind() string {
	if b.distribution != "" {
		return "distribution " + distributionVersion + " proxy mode"
	}
	return "the harness's own pull-through mirror (distribution not built: make deps)"
}

// startMirrorOf starts an empty mirror of upstream (HOST:PORT), with its
// files under dir: the harness's own if own is set, else distribution;
// distribution with no upstream ("") is a plain registry.
func (b *bench) startMirrorOf(ctx context.Context, upstream, dir string, own bool) (*mirrorProc, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	m := &mirrorProc{upstream: upstream, done: make(chan struct{}), distrib: !own}
	if !m.distrib {
		cmd, err := roleCommand(ctx, "mirror", upstream)
		if err != nil {
			return nil, err
		}
		return m, m.startRole(cmd)
	}
	m.storage = filepath.Join(dir, "storage")
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "config.yml")
	remoteURL := ""
	if upstream != "" {
		remoteURL = "http://" + upstream
	}
	if err := os.WriteFile(config, []byte(distributionConfig(addr, m.storage, remoteURL)), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, b.distribution, "serve", config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = distributionEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m.cmd, m.addr = cmd, addr
	go func() { cmd.Wait(); close(m.done) }()
	if err := waitRegistry(ctx, addr, m.done); err != nil {
		m.stop()
		log, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
		return nil, fmt.Errorf("distribution mirror: %w: %s", err, lastBytes(log, 1024))
	}
	return m, nil
}

// startRole starts the harness's own mirror and reads its address.
func (m *mirrorProc) startRole(cmd *exec.Cmd) error {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	m.cmd, m.stdin = cmd, stdin
	go func() { cmd.Wait(); close(m.done) }()
	var line [64]byte
	n, _ := io.ReadAtLeast(stdout, line[:], 1)
	m.addr = strings.TrimSpace(string(line[:n]))
	if _, _, err := net.SplitHostPort(m.addr); err != nil {
		m.stop()
		return fmt.Errorf("mirror role printed %q", line[:n])
	}
	return nil
}

// has reports whether the mirror holds blob d ("sha256:...") of repo
// whole. The harness's mirror holds a blob before it serves its first
// byte; distribution links it once it has stored all of it.
func (m *mirrorProc) has(repo, d string) bool {
	if !m.distrib {
		return true
	}
	alg, hex, _ := strings.Cut(d, ":")
	_, err := os.Stat(filepath.Join(m.storage, "docker", "registry", "v2", "repositories", filepath.FromSlash(repo), "_layers", alg, hex, "link"))
	return err == nil
}

func (m *mirrorProc) stop() {
	if m.stdin != nil {
		m.stdin.Close()
	}
	if m.cmd != nil && m.cmd.Process != nil {
		m.cmd.Process.Kill()
	}
	<-m.done
}

// distributionConfig is regtest's configuration of a distribution
// registry: filesystem storage, no auth, warnings only, no access log,
// and with remote set, a pull-through cache of it.
func distributionConfig(addr, dir, remote string) string {
	c := fmt.Sprintf(`version: 0.1
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
  secret: bench-not-a-secret
`, dir, addr)
	if remote != "" {
		c += fmt.Sprintf("proxy:\n  remoteurl: %q\n", remote)
	}
	return c
}

// distributionEnv is the harness's environment without what would
// reconfigure the registry, and with tracing off (as regtest does).
func distributionEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "REGISTRY_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none")
}

// waitRegistry polls GET /v2/ on addr until a registry answers 200, the
// process ends (done) or 30 s pass.
func waitRegistry(ctx context.Context, addr string, done <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && resp.Header.Get("Docker-Distribution-Api-Version") == "registry/2.0" {
				return nil
			}
		}
		select {
		case <-done:
			return errors.New("exited before it was ready")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready on %s after 30 s", addr)
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// mirrorRole is the harness's own pull-through mirror of upstream, used
// when the distribution registry is not built: blobs and manifests by
// digest, each fetched from the upstream once (concurrent requests for
// one wait for the first's fetch), held in memory and served from there.
// It checks nothing: the runners verify what they get.
func mirrorRole(upstream string) error {
	type entry struct {
		once        sync.Once
		body        []byte
		contentType string
		status      int
	}
	var mu sync.Mutex
	entries := map[string]*entry{}
	client := &http.Client{Timeout: time.Minute}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
			return
		}
		i := strings.LastIndex(r.URL.Path, "/")
		ref := r.URL.Path[i+1:]
		if !strings.HasPrefix(r.URL.Path, "/v2/") || !strings.Contains(ref, ":") ||
			(r.Method != http.MethodGet && r.Method != http.MethodHead) {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		e := entries[r.URL.Path]
		if e == nil {
			e = &entry{}
			entries[r.URL.Path] = e
		}
		mu.Unlock()
		e.once.Do(func() {
			e.status = http.StatusBadGateway
			req, err := http.NewRequest(http.MethodGet, "http://"+upstream+r.URL.Path, nil)
			if err != nil {
				return
			}
			req.Header["Accept"] = r.Header["Accept"]
			resp, err := client.Do(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return
			}
			e.body, e.status, e.contentType = body, resp.StatusCode, resp.Header.Get("Content-Type")
		})
		if e.status != http.StatusOK {
			w.WriteHeader(e.status)
			return
		}
		w.Header().Set("Content-Type", e.contentType)
		w.Header().Set("Docker-Content-Digest", ref)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(e.body))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Minute}
	go srv.Serve(ln)
	fmt.Printf("%s\n", ln.Addr())
	io.Copy(io.Discard, os.Stdin)
	return nil
}
