package hostsconf_test

import (
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/ocibuild/layercache/pkg/hostsconf"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

// writeHosts writes files (path relative to a new directory -> content)
// and returns the directory.
func writeHosts(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, content := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func load(t *testing.T, files map[string]string) map[string]hostsconf.Config {
	t.Helper()
	c, err := hostsconf.Load(writeHosts(t, files))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// urls lists the mirrors' URLs and whether each resolves.
func urls(ms []remotecache.Mirror) []string {
	var out []string
	for _, m := range ms {
		s := m.URL
		if m.Resolve {
			s += " (resolve)"
		}
		out = append(out, s)
	}
	return out
}

// TestLoad_OrderAndCapabilities: hosts come in the order of the file,
// not sorted; a host without "pull" is left out; "resolve" (or no
// capabilities at all, as in containerd) lets tags be resolved.
func TestLoad_OrderAndCapabilities(t *testing.T) {
	t.Parallel()
	c := load(t, map[string]string{"docker.io/hosts.toml": `
server = "https://registry-1.docker.io"

[host."https://zeta.example"]
  capabilities = ["pull"]

[host."https://alpha.example"]
  capabilities = ["pull", "resolve"]

[host."https://push-only.example"]
  capabilities = ["push"]

[host."http://mid.example:5000"]

[host."beta.example"]
  capabilities = ["PULL", "referrers"]
`})
	got := urls(c["docker.io"].Mirrors)
	want := []string{
		"https://zeta.example",
		"https://alpha.example (resolve)",
		"http://mid.example:5000 (resolve)",
		"https://beta.example",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mirrors:\n got %q\nwant %q", got, want)
	}
	if s := c["docker.io"].Server; s != "https://registry-1.docker.io" {
		t.Errorf("Server = %q", s)
	}
}

// TestLoad_OrderFollowsSubtables: a host whose header table comes first
// in the file is still placed where its first key is.
func TestLoad_OrderFollowsSubtables(t *testing.T) {
	t.Parallel()
	c := load(t, map[string]string{"ghcr.io/hosts.toml": `
[host."https://b.example".header]
  x-one = "1"
[host."https://a.example"]
  capabilities = ["pull"]
[host."https://b.example"]
  capabilities = ["pull"]
`})
	if got, want := urls(c["ghcr.io"].Mirrors), []string{"https://b.example", "https://a.example"}; !reflect.DeepEqual(got, want) {
		t.Errorf("mirrors: got %q, want %q", got, want)
	}
}

// TestLoad_Header: header values are a string or a list of strings, sent
// under their canonical names.
func TestLoad_Header(t *testing.T) {
	t.Parallel()
	c := load(t, map[string]string{"docker.io/hosts.toml": `
[host."https://m.example"]
  capabilities = ["pull"]
  [host."https://m.example".header]
    x-custom-1 = "one"
    X-Custom-2 = ["a", "b"]
`})
	ms := c["docker.io"].Mirrors
	if len(ms) != 1 {
		t.Fatalf("%d mirrors", len(ms))
	}
	want := http.Header{"X-Custom-1": {"one"}, "X-Custom-2": {"a", "b"}}
	if !reflect.DeepEqual(ms[0].Header, want) {
		t.Errorf("Header = %v, want %v", ms[0].Header, want)
	}
	if ms[0].Transport != nil {
		t.Errorf("a header alone gave a transport of its own")
	}
}

// tlsServer is an HTTPS server that answers 200, and its certificate as PEM.
func tlsServer(t *testing.T) (*httptest.Server, []byte) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes the tests make
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// get sends a GET to url through rt.
func get(t *testing.T, rt http.RoundTripper, url string) error {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// TestLoad_SkipVerify: skip_verify = true gives the mirror a transport
// that accepts a certificate no root signed; false gives none.
func TestLoad_SkipVerify(t *testing.T) {
	t.Parallel()
	srv, _ := tlsServer(t)
	c := load(t, map[string]string{"docker.io/hosts.toml": `
[host."` + srv.URL + `"]
  capabilities = ["pull"]
  skip_verify = true
[host."https://verified.example"]
  capabilities = ["pull"]
  skip_verify = false
`})
	ms := c["docker.io"].Mirrors
	if ms[0].Transport == nil {
		t.Fatal("skip_verify = true: no transport")
	}
	if err := get(t, ms[0].Transport, srv.URL); err != nil {
		t.Errorf("skip_verify = true: %v", err)
	}
	if ms[1].Transport != nil {
		t.Errorf("skip_verify = false: a transport of its own")
	}
	if err := get(t, http.DefaultTransport, srv.URL); err == nil {
		t.Errorf("the default transport accepts the test certificate: the test tests nothing")
	}
}

// TestLoad_CA: ca, a path relative to the hosts.toml's directory or a
// list of paths, is trusted by the mirror's transport.
func TestLoad_CA(t *testing.T) {
	t.Parallel()
	srv, caPEM := tlsServer(t)
	for _, ca := range []string{`"certs/ca.pem"`, `["certs/ca.pem"]`, `"ABS"`} {
		t.Run(ca, func(t *testing.T) {
			dir := t.TempDir()
			abs := filepath.Join(dir, "docker.io", "certs", "ca.pem")
			files := map[string]string{
				"docker.io/certs/ca.pem": string(caPEM),
				"docker.io/hosts.toml": `
[host."` + srv.URL + `"]
  capabilities = ["pull"]
  ca = ` + strings.ReplaceAll(ca, "ABS", abs) + "\n",
			}
			for p, content := range files {
				full := filepath.Join(dir, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			c, err := hostsconf.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			m := c["docker.io"].Mirrors[0]
			if m.Transport == nil {
				t.Fatal("no transport")
			}
			if err := get(t, m.Transport, srv.URL); err != nil {
				t.Errorf("with the CA: %v", err)
			}
		})
	}
}

// TestLoad_ClientAndDialTimeout: a client certificate and a dial timeout
// are read into the mirror's transport.
func TestLoad_ClientAndDialTimeout(t *testing.T) {
	t.Parallel()
	srv, certPEM := tlsServer(t)
	key, err := x509.MarshalPKCS8PrivateKey(srv.TLS.Certificates[0].PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})
	c := load(t, map[string]string{
		"docker.io/client.cert": string(certPEM),
		"docker.io/client.key":  string(keyPEM),
		"docker.io/both.pem":    string(certPEM) + string(keyPEM),
		"docker.io/hosts.toml": `
[host."https://pairs.example"]
  client = [["client.cert", "client.key"], "both.pem"]
[host."https://one.example"]
  client = "both.pem"
  dial_timeout = "1s"
`,
	})
	ms := c["docker.io"].Mirrors
	for i, want := range []int{2, 1} {
		tr, ok := ms[i].Transport.(*http.Transport)
		if !ok {
			t.Fatalf("%s: transport %T", ms[i].URL, ms[i].Transport)
		}
		if n := len(tr.TLSClientConfig.Certificates); n != want {
			t.Errorf("%s: %d client certificates, want %d", ms[i].URL, n, want)
		}
	}
}

// TestLoad_OverridePath maps containerd's host URLs to Mirror.URL, whose
// path is a repository prefix under /v2/.
func TestLoad_OverridePath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host     string
		override bool
		want     string // Mirror.URL, or the error's text after "error: "
	}{
		{"https://m.example", false, "https://m.example"},
		{"https://m.example/", false, "https://m.example"},
		{"https://m.example/v2", false, "https://m.example"},
		{"https://m.example/v2/", true, "https://m.example"},
		{"m.example:5000", false, "https://m.example:5000"},
		{"http://127.0.0.1:5000", false, "http://127.0.0.1:5000"},
		{"https://harbor.example/v2/dockerhub-proxy", true, "https://harbor.example/v2/dockerhub-proxy"},
		{"https://harbor.example/v2/a/b/", true, "https://harbor.example/v2/a/b"},
		{"https://m.example/us", false, "error: path /us: without override_path it is an API root /us/v2"},
		{"https://m.example/v2/proxy", false, "error: path /v2/proxy: without override_path"},
		{"https://m.example/api", true, "error: API root /api: layercache reaches registries at /v2/ only"},
		{"ftp://m.example", false, "error: the URL must start with http:// or https://"},
		{"https://m.example?x=1", false, "error: only scheme, host, port and path are allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			t.Parallel()
			toml := "[host.\"" + tc.host + "\"]\n  capabilities = [\"pull\"]\n"
			if tc.override {
				toml += "  override_path = true\n"
			}
			dir := writeHosts(t, map[string]string{"docker.io/hosts.toml": toml})
			c, err := hostsconf.Load(dir)
			if want, ok := strings.CutPrefix(tc.want, "error: "); ok {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("Load: %v, want an error containing %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := c["docker.io"].Mirrors[0].URL; got != tc.want {
				t.Errorf("URL = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestLookup: a registry's own directory, else _default, never both;
// Docker Hub's directory under any of its names; containerd's host_port_
// form of a directory name.
func TestLookup(t *testing.T) {
	t.Parallel()
	c := load(t, map[string]string{
		"_default/hosts.toml":             "[host.\"https://default.example\"]\n",
		"docker.io/hosts.toml":            "[host.\"https://hub-mirror.example\"]\n",
		"registry.local_5000_/hosts.toml": "[host.\"https://local-mirror.example\"]\n",
		"empty.example/README":            "no hosts.toml and no certificates: no mirrors, and not _default's\n",
		"not-a-dir":                       "ignored",
	})
	tests := []struct{ reg, want string }{
		{"docker.io", "https://hub-mirror.example"},
		{"index.docker.io", "https://hub-mirror.example"},
		{"registry-1.docker.io", "https://hub-mirror.example"},
		{"registry.local:5000", "https://local-mirror.example"},
		{"ghcr.io", "https://default.example"},
	}
	for _, tc := range tests {
		cfg, ok := hostsconf.Lookup(c, tc.reg)
		if !ok {
			t.Errorf("%s: no configuration", tc.reg)
			continue
		}
		if got := urls(cfg.MirrorsFor(tc.reg)); len(got) != 1 || !strings.HasPrefix(got[0], tc.want) {
			t.Errorf("%s: mirrors %q, want only %s", tc.reg, got, tc.want)
		}
	}
	// A directory of its own, even without a hosts.toml, keeps _default
	// away, as in containerd.
	if cfg, ok := hostsconf.Lookup(c, "empty.example"); !ok || len(cfg.MirrorsFor("empty.example")) != 0 {
		t.Errorf("empty.example: %v, %q; want its own configuration, of no mirrors", ok, urls(cfg.MirrorsFor("empty.example")))
	}
	if _, ok := hostsconf.Lookup(map[string]hostsconf.Config{}, "ghcr.io"); ok {
		t.Errorf("Lookup in no configuration found one")
	}
}

// TestMirrorsFor_Server: a server other than the registry is the last
// mirror, with the top-level settings; the registry itself is a mirror
// only when its settings need one; a server that cannot pull is left out.
func TestMirrorsFor_Server(t *testing.T) {
	t.Parallel()
	c := load(t, map[string]string{
		"docker.io/hosts.toml": `server = "https://docker.io"
[host."https://m.example"]
`,
		"ghcr.io/hosts.toml": `server = "https://ghcr-proxy.example"
capabilities = ["pull"]
[host."https://m.example"]
`,
		"quay.io/hosts.toml": `server = "https://quay.io"
[header]
  authorization-hint = "x"
`,
		"gcr.io/hosts.toml": `server = "https://gcr-proxy.example"
capabilities = ["resolve"]
`,
		"_default/hosts.toml": `server = "https://everything.example"
`,
	})
	tests := []struct {
		reg  string
		want []string
	}{
		{"docker.io", []string{"https://m.example (resolve)"}},
		{"ghcr.io", []string{"https://m.example (resolve)", "https://ghcr-proxy.example"}},
		{"quay.io", []string{"https://quay.io (resolve)"}},
		{"gcr.io", nil},
		{"example.com", []string{"https://everything.example (resolve)"}},
	}
	for _, tc := range tests {
		cfg, _ := hostsconf.Lookup(c, tc.reg)
		if got := urls(cfg.MirrorsFor(tc.reg)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: mirrors %q, want %q", tc.reg, got, tc.want)
		}
	}
	if h := c["quay.io"].Upstream.Header.Get("Authorization-Hint"); h != "x" {
		t.Errorf("quay.io: upstream header %q", h)
	}
}

// TestLoad_CertFiles: a registry directory without hosts.toml holding
// Docker's certificate files is that registry's own configuration (so
// _default does not apply to it), and its CA reaches the registry.
func TestLoad_CertFiles(t *testing.T) {
	t.Parallel()
	srv, caPEM := tlsServer(t)
	reg := strings.TrimPrefix(srv.URL, "https://")
	c := load(t, map[string]string{
		strings.ReplaceAll(reg, ":", "_") + "_/ca.crt": string(caPEM),
		"_default/hosts.toml":                          "[host.\"https://default.example\"]\n",
	})
	cfg, ok := hostsconf.Lookup(c, reg)
	if !ok {
		t.Fatal("no configuration")
	}
	ms := cfg.MirrorsFor(reg)
	if len(ms) != 1 || ms[0].Transport == nil {
		t.Fatalf("mirrors %q, want the registry itself with its CA", urls(ms))
	}
	if err := get(t, ms[0].Transport, srv.URL); err != nil {
		t.Errorf("with the CA: %v", err)
	}
}

// TestLoad_Errors: every misconfiguration is an error that names the
// file, never a configuration with a part left out.
func TestLoad_Errors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		files map[string]string
		file  string // the path the error must name, relative to the directory
		want  string
	}{
		{"unknown capability", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\"]\n  capabilities = [\"pull\", \"fetch\"]\n"},
			"docker.io/hosts.toml", `host "https://m.example": unknown capability "fetch"`},
		{"unknown top-level capability", map[string]string{"docker.io/hosts.toml": "server = \"https://docker.io\"\ncapabilities = [\"pul\"]\n"},
			"docker.io/hosts.toml", `unknown capability "pul"`},
		{"unknown key", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\"]\n  capabilites = [\"pull\"]\n"},
			"docker.io/hosts.toml", `unknown key "host.\"https://m.example\".capabilites"`},
		{"syntax", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\"\n"},
			"docker.io/hosts.toml", "toml: line 2: expected"},
		{"wrong type", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\"]\n  capabilities = \"pull\"\n"},
			"docker.io/hosts.toml", "capabilities"},
		{"header of a number", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\".header]\n  x-n = 1\n"},
			"docker.io/hosts.toml", `header "x-n"`},
		{"missing CA", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\"]\n  ca = \"nope.pem\"\n"},
			"docker.io/hosts.toml", "nope.pem: no such file"},
		{"CA without a certificate", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\"]\n  ca = \"ca.pem\"\n", "docker.io/ca.pem": "junk"},
			"docker.io/hosts.toml", "no PEM certificate"},
		{"bad client pair", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\"]\n  client = [[\"a\", \"b\", \"c\"]]\n"},
			"docker.io/hosts.toml", "client: want a path or a [cert, key] pair"},
		{"bad dial timeout", map[string]string{"docker.io/hosts.toml": "[host.\"https://m.example\"]\n  dial_timeout = \"soon\"\n"},
			"docker.io/hosts.toml", `dial_timeout "soon"`},
		{"bad server", map[string]string{"docker.io/hosts.toml": "server = \"https://\"\n"},
			"docker.io/hosts.toml", `server "https://": no host`},
		{"hosts.toml is a directory", map[string]string{"docker.io/hosts.toml/x": ""},
			"docker.io/hosts.toml", "not a regular file"},
		{"two directories for one registry", map[string]string{"r.example_5000_/hosts.toml": "", "r.example:5000/hosts.toml": ""},
			"r.example", "both configure r.example:5000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := writeHosts(t, tc.files)
			c, err := hostsconf.Load(dir)
			if err == nil {
				t.Fatalf("Load: no error, got %+v", c)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), filepath.Join(dir, tc.file)) {
				t.Errorf("error %q does not name %s", err, tc.file)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is more than one line", err)
			}
		})
	}
}

// TestLoad_FIFO: a FIFO at hosts.toml is reported, never opened (which
// would block).
func TestLoad_FIFO(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "docker.io"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "docker.io", "hosts.toml"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, err := hostsconf.Load(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Load: %v, want not a regular file", err)
	}
}

// TestLoad_FIFOAsDir: a FIFO given as the directory is reported, never
// opened.
func TestLoad_FIFOAsDir(t *testing.T) {
	t.Parallel()
	fifo := filepath.Join(t.TempDir(), "hosts")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, err := hostsconf.Load(fifo); err == nil || !strings.Contains(err.Error(), fifo+": not a directory") {
		t.Errorf("Load: %v, want not a directory", err)
	}
}

// TestLoad_MissingDir: a directory that does not exist is an error.
func TestLoad_MissingDir(t *testing.T) {
	t.Parallel()
	if _, err := hostsconf.Load(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Error("Load of a missing directory: no error")
	}
}
