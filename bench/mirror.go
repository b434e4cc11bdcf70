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
	"sort"
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

// runCLIsAtOnce runs the built CLI once per argument list, all at once:
// each process starts under a shell that waits for a line on its stdin,
// and the lines go out once all have started. It returns how many failed,
// and why.
func (b *bench) runCLIsAtOnce(ctx context.Context, argLists [][]string) (int, error) {
	type child struct {
		cmd    *exec.Cmd
		start  io.WriteCloser
		stderr *limitedBuffer
	}
	var children []child
	defer func() {
		for _, c := range children {
			c.start.Close()
			c.cmd.Wait()
		}
	}()
	for _, args := range argLists {
		cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", `read _ && exec "$0" "$@"`, b.cli}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return len(argLists), err
		}
		stderr := &limitedBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			return len(argLists), err
		}
		children = append(children, child{cmd, stdin, stderr})
	}
	for _, c := range children {
		if _, err := c.start.Write([]byte{'\n'}); err != nil {
			return len(argLists), err
		}
	}
	var errs []error
	for _, c := range children {
		if err := c.cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("layercache: %w: %s", err, strings.TrimSpace(c.stderr.String())))
		}
		c.start.Close()
	}
	children = nil
	return len(errs), errors.Join(errs...)
}

// fleetRunners is how many runners warm one image at once in row 12.
const fleetRunners = 8

// fleet: 8 runners (separate cache directories, separate `layercache
// warm` processes, at once) warm one cold image through a cold mirror;
// the upstream's blob bytes ÷ the image's, against the same fleet with no
// mirror. The image is the 8-layer one of row 8: a ratio of bytes needs
// no big layers.
func (b *bench) fleet(ctx context.Context) error {
	im, err := b.image(ctx, "latency")
	if err != nil {
		return err
	}
	base := filepath.Join(b.work, "fleet")
	defer os.RemoveAll(base)
	var m *mirrorProc
	defer func() {
		if m != nil {
			m.stop()
		}
	}()
	dirs := make([]string, fleetRunners)
	for i := range dirs {
		dirs[i] = filepath.Join(base, fmt.Sprintf("runner%d", i))
	}
	// withMirror: 0 none, 1 the mirror of mirrorKind, 2 the harness's own.
	fresh := func(withMirror int) func(context.Context) error {
		return func(ctx context.Context) error {
			for _, d := range dirs {
				if err := os.RemoveAll(d); err != nil {
					return err
				}
			}
			if m != nil {
				m.stop()
				m = nil
			}
			if withMirror > 0 {
				var err error
				if m, err = b.startMirrorOf(ctx, b.reg.host, filepath.Join(base, "mirror"), withMirror == 2 || b.distribution == ""); err != nil {
					return err
				}
			}
			syscall.Sync()
			return b.reg.reset()
		}
	}
	served := func(withMirror int, f *failures) func(context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			var lists [][]string
			for _, d := range dirs {
				args := []string{"--cache-dir", d, "warm"}
				if withMirror > 0 {
					args = append(args, "--mirror", b.reg.host+"=http://"+m.addr)
				}
				lists = append(lists, append(args, im.tag.String()))
			}
			failed, err := b.runCLIsAtOnce(ctx, lists)
			f.runs += len(lists)
			f.failed += failed
			if failed > 0 && f.first == "" {
				f.first, _, _ = strings.Cut(err.Error(), "\n")
			}
			c, err := b.reg.counters()
			return float64(c.BlobBytes) / float64(im.blobBytes()), err
		}
	}
	var withF, ownF, withoutF failures
	with := variant{name: fmt.Sprintf("%d runners through the mirror", fleetRunners), unit: unitRatio,
		prep: fresh(1), run: served(1, &withF)}
	without := variant{name: fmt.Sprintf("%d runners, no mirror", fleetRunners), unit: unitRatio,
		prep: fresh(0), run: served(0, &withoutF)}
	vs := []variant{with, without}
	if b.distribution != "" {
		vs = append(vs, variant{name: fmt.Sprintf("%d runners through the harness's mirror", fleetRunners), unit: unitRatio,
			prep: fresh(2), run: served(2, &ownF)})
	}
	st, err := b.sample(ctx, "fleet", vs...)
	if err != nil {
		return err
	}
	once := check{
		target: fmt.Sprintf("1.0 (no mirror: %d.0), no runner fails", fleetRunners),
		ratio:  "A",
		calc:   func(a, _ float64) float64 { return a },
		pass:   func(r float64) bool { return r <= 1.01 && withF.failed == 0 },
	}
	b.addRow("12", fmt.Sprintf("%d cold runners (own cache directories, `layercache warm` processes at once) warm one %d-layer image: upstream blob bytes ÷ image bytes, through a cold mirror, %s (A) vs no mirror (B)",
		fleetRunners, len(im.layers), b.mirrorKind()), kindRandom, st[0], st[1], once)
	if len(st) > 2 {
		// distribution sends a request for a blob it is still fetching to
		// the upstream too (distribution#1334): the runners' own share is
		// seen through a mirror that makes them wait for its one fetch.
		b.addRow("12'", "the same through the harness's own pull-through mirror, whose concurrent misses of a blob wait for its one fetch (A) vs no mirror (B)", kindRandom, st[2], st[1], infoTimes("A ÷ B"))
	}
	for _, f := range []struct {
		what string
		f    *failures
	}{{"through the mirror", &withF}, {"no mirror", &withoutF}, {"through the harness's mirror", &ownF}} {
		if f.f.failed > 0 {
			b.note(fmt.Sprintf("row 12, %s: %s", f.what, f.f))
		}
	}
	return nil
}

// mirrorLatency: a cold runner (`layercache warm`, a new cache directory)
// whose image the mirror holds, against the same runner pulling from the
// upstream through the +20 ms proxy. The mirror's upstream is that proxy
// too; the runner asks the upstream for the tag either way (--mirror
// serves blobs and manifests by digest).
func (b *bench) mirrorLatency(ctx context.Context) error {
	im, err := b.image(ctx, "latency")
	if err != nil {
		return err
	}
	ref, err := im.byTag(b.reg.slowHost)
	if err != nil {
		return err
	}
	var stops []func()
	base := filepath.Join(b.work, "mirror-latency")
	defer os.RemoveAll(base)
	dir := filepath.Join(base, "runner")
	byDigest, err := im.byDigest(b.reg.slowHost)
	if err != nil {
		return err
	}
	// warmMirror starts a mirror of the +20 ms port, warms it (not
	// measured) and waits until it holds every blob; it returns the
	// runner's --mirror flag.
	digests := []string{im.config.String()}
	for _, l := range im.layers {
		digests = append(digests, l.digest.String())
	}
	sort.Strings(digests)
	warmMirror := func(own bool, sub string) ([]string, error) {
		m, err := b.startMirrorOf(ctx, b.reg.slowHost, filepath.Join(base, sub), own)
		if err != nil {
			return nil, err
		}
		stops = append(stops, m.stop)
		flag := []string{"--mirror", b.reg.slowHost + "=http://" + m.addr}
		if err := freshStore(dir); err != nil {
			return nil, err
		}
		if err := b.runCLI(ctx, append(append([]string{"--cache-dir", dir, "warm"}, flag...), ref.String())...); err != nil {
			return nil, err
		}
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			missing := 0
			for _, d := range digests {
				if !m.has("bench/"+im.name, d) {
					missing++
				}
			}
			if missing == 0 {
				return flag, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("the mirror holds %d of %d blobs a minute after a warm through it", len(digests)-missing, len(digests))
			}
		}
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	mirrorFlag, err := warmMirror(b.distribution == "", "mirror")
	if err != nil {
		return err
	}
	prep := func(context.Context) error { return freshStore(dir) }
	n := im.layerBytes()
	warm := func(r fmt.Stringer, flag []string) func(context.Context) error {
		args := append(append([]string{"--cache-dir", dir, "warm"}, flag...), r.String())
		return func(ctx context.Context) error { return b.runCLI(ctx, args...) }
	}
	vs := []variant{
		{name: "by digest, image warm in the mirror", unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(byDigest, mirrorFlag))},
		{name: fmt.Sprintf("by digest, upstream +%s", latency), unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(byDigest, nil))},
		{name: "by tag, image warm in the mirror", unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(ref, mirrorFlag))},
		{name: fmt.Sprintf("by tag, upstream +%s", latency), unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(ref, nil))},
	}
	if b.distribution != "" {
		// The same runner against the harness's own mirror: what the
		// runner's side of the row gives with a mirror that serves from
		// memory.
		ownFlag, err := warmMirror(true, "own-mirror")
		if err != nil {
			return err
		}
		vs = append(vs, variant{name: "by digest, image warm in the harness's mirror", unit: unitSeconds, bytes: n, prep: prep, run: timed(warm(byDigest, ownFlag))})
	}
	st, err := b.sample(ctx, "mirror latency", vs...)
	if err != nil {
		return err
	}
	// What the upstream still sees of a warm through the mirror (the
	// runner's requests and the mirror's): one more run, not measured.
	for _, v := range []struct {
		what string
		r    fmt.Stringer
	}{{"by digest", byDigest}, {"by tag", ref}} {
		if err := prep(ctx); err != nil {
			return err
		}
		if err := b.reg.reset(); err != nil {
			return err
		}
		if err := warm(v.r, mirrorFlag)(ctx); err != nil {
			return err
		}
		c, err := b.reg.counters()
		if err != nil {
			return err
		}
		b.note(fmt.Sprintf("row 13, %s: a cold runner's warm through the warm mirror made %d requests to the upstream (%d blob GETs)", v.what, c.Requests, c.BlobGets))
	}
	what := fmt.Sprintf("`layercache warm` of a %d-layer image by a cold runner: image warm in a loopback mirror, %s (A) vs from the upstream, +%s per request (B)", len(im.layers), b.mirrorKind(), latency)
	b.addRow("13", what+"; by digest (the mirror answers every request)", kindRandom, st[0], st[1], speedAtLeast(1.5, "≥ 1.5"))
	b.addRow("13'", what+"; by tag (--mirror serves digests: the tag is asked of the upstream)", kindRandom, st[2], st[3], infoSpeed())
	if len(st) > 4 {
		b.addRow("13''", fmt.Sprintf("the same by digest, image warm in the harness's own mirror (blobs in memory) (A) vs from the upstream, +%s per request (B)", latency), kindRandom, st[4], st[1], infoSpeed())
	}
	return nil
}
