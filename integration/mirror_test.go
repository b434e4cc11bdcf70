package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// A fleet of runners, each with a cache of its own (separate machines),
// behind one pull-through mirror: the CNCF distribution registry in proxy
// mode (regtest.Mirrors), with a counting proxy between it and the
// upstream registry. The runners are processes of the layercache command,
// pointed at the mirror by --mirror or by a hosts.toml.

// TestMain removes the layercache command that the mirror tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if cliBin.dir != "" {
		os.RemoveAll(cliBin.dir)
	}
	os.Exit(code)
}

// cliBin is the layercache command, built once per test binary.
var cliBin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// layercacheCLI returns the path of the layercache command, built from
// the root module (the parent directory) on first use.
func layercacheCLI(t *testing.T) string {
	t.Helper()
	cliBin.once.Do(func() {
		root, err := filepath.Abs("..")
		if err != nil {
			cliBin.err = err
			return
		}
		if cliBin.dir, cliBin.err = os.MkdirTemp("", "layercache-it-cli-"); cliBin.err != nil {
			return
		}
		out := filepath.Join(cliBin.dir, "layercache")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/layercache")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			cliBin.err = fmt.Errorf("go build ./cmd/layercache: %v\n%s", err, b)
			return
		}
		cliBin.path = out
	})
	if cliBin.err != nil {
		t.Fatalf("building the layercache command: %v", cliBin.err)
	}
	return cliBin.path
}

// runner is one machine of the fleet: the layercache command with a cache
// directory of its own and no Docker credentials.
type runner struct {
	t     *testing.T
	name  string
	cli   string
	cache string
	env   []string
}

func newRunner(t *testing.T, name string) *runner {
	t.Helper()
	home := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "LAYERCACHE_") || k == "OCIBUILD_CACHE_DIR" || k == "DOCKER_CONFIG" || k == "HOME" ||
			strings.EqualFold(k, "HTTP_PROXY") || strings.EqualFold(k, "HTTPS_PROXY") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+home, "DOCKER_CONFIG="+filepath.Join(home, ".docker"))
	return &runner{t: t, name: name, cli: layercacheCLI(t), cache: filepath.Join(home, "cache"), env: env}
}

// run is one run of the layercache command.
type run struct {
	r              *runner
	args           []string
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error // cmd.Wait's, once done is closed
}

// runTimeout bounds one run of the command, so that a pull that hangs
// fails its test (the run is killed) instead of holding up the whole
// suite until go test's own timeout. A warm here takes well under a
// second; the slowest, under a 429, waits about 4 s for ggcr's retries.
const runTimeout = 2 * time.Minute

// start starts `layercache --cache-dir CACHE --json warm ARGS...`.
func (r *runner) start(args ...string) *run {
	r.t.Helper()
	x := &run{r: r, args: args, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(r.t.Context(), runTimeout)
	x.cmd = exec.CommandContext(ctx, r.cli, append([]string{"--cache-dir", r.cache, "--json", "warm"}, args...)...)
	x.cmd.Env = r.env
	x.cmd.Stdout = &x.stdout
	x.cmd.Stderr = &x.stderr
	if err := x.cmd.Start(); err != nil {
		cancel()
		r.t.Fatalf("%s: %v", r.name, err)
	}
	go func() {
		x.err = x.cmd.Wait()
		cancel()
		close(x.done)
	}()
	return x
}

// warm runs `layercache warm` to its end.
func (r *runner) warm(args ...string) *run {
	r.t.Helper()
	x := r.start(args...)
	<-x.done
	return x
}

// ok fails the test unless the run exited 0, and returns its report.
func (x *run) ok(t *testing.T) warmReport {
	t.Helper()
	<-x.done
	if x.err != nil {
		t.Fatalf("%s: layercache warm %s: %v\nstderr:\n%s", x.r.name, strings.Join(x.args, " "), x.err, x.stderr.String())
	}
	var rep warmReport
	if err := json.Unmarshal(x.stdout.Bytes(), &rep); err != nil {
		t.Fatalf("%s: no JSON report (%v):\n%s", x.r.name, err, x.stdout.String())
	}
	return rep
}

// warmReport is the part of `layercache warm --json` these tests read.
type warmReport struct {
	Images  []remotecache.Report `json:"images"`
	Cached  remotecache.Tally    `json:"cached"`
	Fetched remotecache.Tally    `json:"fetched"`
}

// assertWhole checks that the runner's cache holds every blob of fx,
// verified, and nothing unsound.
func (r *runner) assertWhole(t *testing.T, fx *fixture) {
	t.Helper()
	s, err := store.Open(r.cache)
	if err != nil {
		t.Fatalf("%s: %v", r.name, err)
	}
	assertHolds(t, s, fx.blobs(t)...)
	assertStoreSound(t, s)
}

// waitUntil calls cond every few milliseconds until it holds or ctx ends.
func waitUntil(ctx context.Context, cond func() bool) bool {
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}

// hostsDir writes DIR/<registry>/hosts.toml, with the registry's
// directory in containerd's host_port_ form, and returns DIR.
func hostsDir(t *testing.T, registry, toml string) string {
	t.Helper()
	dir := t.TempDir()
	sub := filepath.Join(dir, strings.ReplaceAll(registry, ":", "_")+"_")
	check(t, os.Mkdir(sub, 0o755))
	check(t, os.WriteFile(filepath.Join(sub, "hosts.toml"), []byte(toml), 0o644))
	return dir
}

// TestRegtest_MirrorsPullThrough checks the harness the tests below rest
// on: a registry started with regtest.Mirrors fetches each blob from its
// upstream once, links it (HasBlob) once it has it whole, and, with the
// upstream gone, still serves it, the tag included.
func TestRegtest_MirrorsPullThrough(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	up := regtest.NewProxy(t, reg.Addr)
	mirror := regtest.Start(t, regtest.Mirrors(up.URL))
	fx := pushImage(t, reg, up, "harness/img:v1", 300<<10, 20<<10)
	onMirror := parseRef(t, mirror.Addr+"/harness/img:v1")

	blobs := fx.blobs(t)[1:] // config and layers
	for _, d := range blobs {
		if mirror.HasBlob("harness/img", d.String()) {
			t.Fatalf("the mirror has %s before any pull", d)
		}
	}
	for i := range 2 {
		img, err := remote.Image(onMirror)
		if err != nil {
			t.Fatalf("pull %d through the mirror: %v", i, err)
		}
		assertPulled(t, fmt.Sprintf("pull %d", i), readImage(t, img), fx.want)
	}
	assertStats(t, "two pulls through the mirror", up.Stats(), regtest.Stats{BlobGets: int64(len(blobs)), BlobBytes: fx.blobBytes, ManifestGets: -1, BlobUploads: 0, Mounts: 0})
	for _, d := range blobs {
		if !mirror.HasBlob("harness/img", d.String()) {
			t.Errorf("HasBlob(%s) = false after the pull", d)
		}
	}

	up.Close()
	img, err := remote.Image(onMirror)
	if err != nil {
		t.Fatalf("pull by tag through the mirror, upstream gone: %v", err)
	}
	assertPulled(t, "upstream gone", readImage(t, img), fx.want)
}

// TestMirror_FleetFetchesEachBlobOnce: four runners with caches of their
// own warm one cold image at once through the mirror (--mirror). The
// upstream serves each blob once for the whole fleet; a runner's second
// warm asks neither the mirror nor the upstream for a blob or manifest.
func TestMirror_FleetFetchesEachBlobOnce(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	up := regtest.NewProxy(t, reg.Addr) // what the upstream serves
	mirror := regtest.Start(t, regtest.Mirrors(up.URL))
	front := regtest.NewProxy(t, mirror.Addr) // what the mirror serves
	const repo = "fleet/img"
	fx := pushImage(t, reg, up, repo+":v1", 1<<20, 256<<10, 64<<10)
	blobs := fx.blobs(t)[1:]

	// The distribution registry sends a request for a blob it is still
	// fetching to the upstream too, instead of waiting for its own fetch.
	// So, for each blob, the first runner's request goes through to the
	// mirror and the others wait in front of it until the mirror holds
	// the blob: the test is of the runners, not of that race.
	for _, d := range blobs {
		g := regtest.NewGate()
		var first atomic.Bool
		front.Inject(regtest.HoldUntil(g).Only(regtest.IsBlobGet).Only(regtest.HasDigest(d.String())).
			Only(func(*http.Request) bool { return !first.CompareAndSwap(false, true) }))
		go func() {
			if waitUntil(t.Context(), func() bool { return mirror.HasBlob(repo, d.String()) }) {
				g.Open()
			}
		}()
	}

	mirrorFlag := "--mirror=" + up.Addr + "=" + front.URL
	var runners []*runner
	var runs []*run
	for i := range 4 {
		r := newRunner(t, fmt.Sprintf("runner %d", i))
		runners = append(runners, r)
		runs = append(runs, r.start(mirrorFlag, fx.tag.String()))
	}
	for i, x := range runs {
		rep := x.ok(t)
		if want := len(blobs) + 1; rep.Fetched.Blobs != want || rep.Cached.Blobs != 0 {
			t.Errorf("runner %d: fetched %d blobs and found %d cached, want %d fetched (its cache was empty)", i, rep.Fetched.Blobs, rep.Cached.Blobs, want)
		}
		runners[i].assertWhole(t, fx)
	}
	st := up.Stats()
	t.Logf("upstream: %+v; mirror: %+v", st, front.Stats())
	assertStats(t, "four runners through the mirror", st, regtest.Stats{BlobGets: int64(len(blobs)), BlobBytes: fx.blobBytes, ManifestGets: -1, BlobUploads: 0, Mounts: 0})

	// A runner's second warm: the tag it recorded costs the upstream a
	// HEAD; no blob or manifest is fetched from anyone.
	up.Reset()
	front.Reset()
	rep := runners[0].warm(mirrorFlag, fx.tag.String()).ok(t)
	if rep.Fetched.Blobs != 0 {
		t.Errorf("second warm fetched %d blobs, want none", rep.Fetched.Blobs)
	}
	if st := front.Stats(); st.Requests != 0 {
		t.Errorf("second warm: the mirror saw %d requests, want none: %+v", st.Requests, st)
	}
	assertStats(t, "second warm, upstream", up.Stats(), regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0})

	// By digest, the second warm asks no one at all.
	up.Reset()
	runners[1].warm(mirrorFlag, fx.dig.String()).ok(t)
	if st, ms := up.Stats(), front.Stats(); st.Requests != 0 || ms.Requests != 0 {
		t.Errorf("warm by digest of a cached image: upstream saw %d requests, mirror %d; want none", st.Requests, ms.Requests)
	}
}

// TestMirror_StoppedMidway: the mirror is killed while it fetches a layer
// for the runners; they finish through the upstream, with a warning that
// names the mirror.
func TestMirror_StoppedMidway(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	up := regtest.NewProxy(t, reg.Addr)
	mirror := regtest.Start(t, regtest.Mirrors(up.URL))
	fx := pushImage(t, reg, up, "midway/img:v1", 512<<10, 128<<10, 700<<10)
	last := fx.want.layers[len(fx.want.layers)-1].digest.String()

	// The mirror's fetch of the last layer waits at the upstream, so
	// that the mirror dies in the middle of the pull. The runners' own
	// requests, which name layercache in their User-Agent, go by.
	g := regtest.NewGate()
	fromMirror := func(r *http.Request) bool { return !strings.Contains(r.UserAgent(), "layercache") }
	held := up.Inject(regtest.HoldUntil(g).Only(regtest.IsBlobGet).Only(regtest.HasDigest(last)).Only(fromMirror))

	var runners []*runner
	var runs []*run
	for i := range 4 {
		r := newRunner(t, fmt.Sprintf("runner %d", i))
		runners = append(runners, r)
		runs = append(runs, r.start("--mirror", up.Addr+"="+mirror.URL(), fx.tag.String()))
	}
	allDone := make(chan struct{})
	go func() {
		for _, x := range runs {
			<-x.done
		}
		close(allDone)
	}()
	fetching := make(chan error, 1)
	go func() { fetching <- held.Await(t.Context(), 1) }()
	select {
	case err := <-fetching:
		if err != nil {
			t.Fatal(err)
		}
		mirror.Stop()
	case <-allDone:
		t.Errorf("every runner ended before the mirror asked the upstream for %s: the runners did not pull through the mirror", last)
	}
	g.Open()
	<-allDone
	for i, x := range runs {
		x.ok(t)
		runners[i].assertWhole(t, fx)
		if !strings.Contains(x.stderr.String(), mirror.Addr) {
			t.Errorf("runner %d: no warning names the mirror %s; stderr:\n%s", i, mirror.Addr, x.stderr.String())
		}
	}
}

// TestMirror_UpstreamDown: with the upstream down and the mirror warm,
// cold runners still pull, their tags resolved through the mirror, which
// a hosts.toml lets resolve. A mirror given by --mirror is not asked for
// tags, so a runner that never warmed the tag cannot resolve it.
func TestMirror_UpstreamDown(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	up := regtest.NewProxy(t, reg.Addr)
	mirror := regtest.Start(t, regtest.Mirrors(up.URL))
	fx := pushImage(t, reg, up, "down/img:v1", 256<<10, 64<<10)

	// Warm the mirror with a plain pull through it, then take the
	// upstream away: connections to it are refused from now on.
	img, err := remote.Image(parseRef(t, mirror.Addr+"/down/img:v1"))
	if err != nil {
		t.Fatalf("warming the mirror: %v", err)
	}
	assertPulled(t, "warming the mirror", readImage(t, img), fx.want)
	up.Close()

	dir := hostsDir(t, up.Addr, `
[host."`+mirror.URL()+`"]
  capabilities = ["pull", "resolve"]
`)
	var runs []*run
	var runners []*runner
	for i := range 2 {
		r := newRunner(t, fmt.Sprintf("runner %d", i))
		runners = append(runners, r)
		runs = append(runs, r.start("--hosts-dir", dir, fx.tag.String()))
	}
	for i, x := range runs {
		rep := x.ok(t)
		if len(rep.Images) != 1 || rep.Images[0].Digest != fx.want.digest.String() {
			t.Errorf("runner %d: warmed %+v, want %s", i, rep.Images, fx.want.digest)
		}
		runners[i].assertWhole(t, fx)
	}

	x := newRunner(t, "runner without resolve").warm("--mirror", up.Addr+"="+mirror.URL(), fx.tag.String())
	<-x.done
	if x.err == nil {
		t.Errorf("a mirror without resolve resolved the tag; stdout:\n%s", x.stdout.String())
	} else if !strings.Contains(x.stderr.String(), "never warmed") {
		t.Errorf("without resolve: stderr %q, want it to say the tag was never warmed", x.stderr.String())
	}
}

// TestMirror_HostsOrderAndHeader: a hosts.toml of two hosts, each with a
// header. The first lacks the image (404); the pull asks it first, then
// the second, which also resolves the tag; each host gets its own
// header, and the upstream serves nothing.
func TestMirror_HostsOrderAndHeader(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	up := regtest.NewProxy(t, reg.Addr)
	fx := pushImage(t, reg, up, "order/img:v1", 128<<10, 32<<10)
	a := regtest.NewProxy(t, reg.Addr)
	b := regtest.NewProxy(t, reg.Addr)

	type seenReq struct {
		host, method, path string
		header             []string
	}
	var (
		mu   sync.Mutex
		seen []seenReq // in the order they arrived, at either host
	)
	observe := func(host string) regtest.Fault {
		return regtest.Observe(func(r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, seenReq{host, r.Method, r.URL.Path, r.Header.Values("X-Layercache-Test")})
		})
	}
	a.Inject(observe("a"))
	a.Inject(regtest.Status(http.StatusNotFound).Only(func(r *http.Request) bool { return r.URL.Path != "/v2/" }))
	b.Inject(observe("b"))

	dir := hostsDir(t, up.Addr, `
[host."`+a.URL+`"]
  capabilities = ["pull"]
  [host."`+a.URL+`".header]
    x-layercache-test = "a"

[host."`+b.URL+`"]
  capabilities = ["pull", "resolve"]
  [host."`+b.URL+`".header]
    x-layercache-test = ["b1", "b2"]
`)
	r := newRunner(t, "runner")
	r.warm("--hosts-dir", dir, fx.tag.String()).ok(t)
	r.assertWhole(t, fx)

	mu.Lock()
	defer mu.Unlock()
	var log strings.Builder
	for _, s := range seen {
		fmt.Fprintf(&log, "  %s %s %s %q\n", s.host, s.method, s.path, s.header)
	}
	t.Logf("requests at the hosts:\n%s", log.String())
	want := map[string][]string{"a": {"a"}, "b": {"b1", "b2"}}
	firstBlob := map[string]int{}
	tagAsked := map[string]bool{}
	for i, s := range seen {
		if !slices.Equal(s.header, want[s.host]) {
			t.Errorf("%s %s at host %s: X-Layercache-Test %q, want %q", s.method, s.path, s.host, s.header, want[s.host])
		}
		if _, ok := firstBlob[s.host]; !ok && strings.Contains(s.path, "/blobs/") {
			firstBlob[s.host] = i
		}
		if strings.HasSuffix(s.path, "/manifests/v1") {
			tagAsked[s.host] = true
		}
	}
	fa, okA := firstBlob["a"]
	fb, okB := firstBlob["b"]
	switch {
	case !okA || !okB:
		t.Errorf("blobs asked of host a: %v, of host b: %v; want both, a first", okA, okB)
	case fa > fb:
		t.Errorf("host b was asked for a blob before host a")
	}
	if tagAsked["a"] {
		t.Errorf("host a, without resolve, was asked for the tag")
	}
	if !tagAsked["b"] {
		t.Errorf("host b, with resolve, was not asked for the tag")
	}
	assertStats(t, "upstream", up.Stats(), regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0})
}

// TestMirror_TooManyRequestsUsesRecordedTag: the upstream answers 429 (a
// pull limit) for the tag's manifest. A runner that recorded the tag
// warms from its cache with a warning; one that never did fails.
func TestMirror_TooManyRequestsUsesRecordedTag(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	up := regtest.NewProxy(t, reg.Addr)
	mirror := regtest.Start(t, regtest.Mirrors(up.URL))
	fx := pushImage(t, reg, up, "limit/img:v1", 200<<10, 10<<10)
	mirrorFlag := "--mirror=" + up.Addr + "=" + mirror.URL()

	r := newRunner(t, "runner")
	r.warm(mirrorFlag, fx.tag.String()).ok(t)

	up.Inject(regtest.Status(http.StatusTooManyRequests).Only(func(r *http.Request) bool {
		return strings.Contains(r.URL.Path, "/manifests/")
	}))
	x := r.warm(mirrorFlag, fx.tag.String())
	rep := x.ok(t)
	if len(rep.Images) != 1 || rep.Images[0].Digest != fx.want.digest.String() || rep.Fetched.Blobs != 0 {
		t.Errorf("warm under a 429: %+v, want %s from the cache", rep, fx.want.digest)
	}
	if !strings.Contains(x.stderr.String(), "level=WARN") {
		t.Errorf("warm under a 429: no warning; stderr:\n%s", x.stderr.String())
	}
	r.assertWhole(t, fx)

	cold := newRunner(t, "cold runner").warm(mirrorFlag, fx.tag.String())
	if cold.err == nil {
		t.Errorf("a runner that never recorded the tag warmed it under a 429")
	}
}
