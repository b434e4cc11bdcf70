// Package hostsconf reads containerd's registry host configuration: a
// directory holding DIR/<registry>/hosts.toml, the layout that containerd
// (config_path, ctr --hosts-dir), nerdctl and BuildKit share, and turns
// it into the mirrors of [remotecache.WithMirrors].
//
// # Layout
//
// Each subdirectory of DIR names a registry: "docker.io", "ghcr.io",
// "registry.local:5000" (or "registry.local_5000_", the form containerd
// looks for first and the one Windows needs). The subdirectory "_default"
// configures every registry that has no subdirectory of its own; it is
// not merged with one that has ([Lookup]). A subdirectory without a
// hosts.toml counts as the registry's own, as in containerd: its Docker
// certificate files (*.crt as CAs; *.cert with *.key as client
// certificates) are the TLS settings of the registry itself.
//
// # What a hosts.toml says, and what layercache does with it
//
//   - server: the upstream of the namespace. When it is a host other than
//     the registry named in the reference, it is tried as the last mirror,
//     and then, unlike containerd, the registry named in the reference is
//     still asked (blobs are verified by digest whoever serves them).
//   - [host."URL"] tables: the mirrors, tried in the order the file lists
//     them. A URL without a scheme gets https://, as in containerd.
//   - capabilities: "pull" and "resolve" (and "push" and "referrers",
//     which a pull does not use). A host without "pull" is not used; with
//     "resolve", tags are resolved through it ([remotecache.Mirror].Resolve).
//     No capabilities means all of them, as in containerd. Any other value
//     is an error.
//   - skip_verify, ca (a path or a list of paths, relative ones to the
//     hosts.toml's directory), client (a path, a list of paths, or a list
//     of [cert, key] pairs) and dial_timeout: the mirror's own transport
//     ([remotecache.Mirror].Transport), a copy of ggcr's default transport
//     with those settings. CAs are added to the system's roots. On an
//     http:// host they have no effect (containerd would try https first).
//   - header: headers added to every request to the host.
//   - override_path: the URL's path is the API root as it is. layercache
//     reaches every host at /v2/ (through ggcr), so it takes the forms in
//     which that holds: a URL without a path or with the path /v2, and,
//     with override_path = true, /v2/PREFIX, where PREFIX is a prefix of
//     every repository on the mirror (Harbor's proxy project, say). An API
//     root anywhere else (a path without override_path, which containerd
//     reads as PATH/v2) is an error.
//
// Top-level capabilities, TLS settings and headers are the server's. When
// they apply to the registry itself (no server, or a server that is the
// registry), the registry is tried as the last mirror with them, before
// it is asked with the pull's own transport.
//
// Anything else is an error that names the file: a key this package does
// not know (containerd would ignore it, so a typo would go unnoticed), a
// value of the wrong type, a CA or client certificate that cannot be read,
// a malformed URL. Nothing falls back silently.
package hostsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// Default is the directory name whose hosts.toml configures every
// registry that has no directory of its own.
const Default = "_default"

// FileName is the name of the configuration file in each registry's
// directory.
const FileName = "hosts.toml"

// maxFileSize bounds what Load reads of one hosts.toml: such a file is a
// few hundred bytes, and a FIFO or a huge file planted there must not
// block or fill memory.
const maxFileSize = 1 << 20

// Config is the configuration of one registry namespace.
type Config struct {
	// File is the hosts.toml it was read from, or the registry's
	// directory when that holds only certificate files.
	File string
	// Server is the file's server, with https:// added when it has no
	// scheme; "" when the file does not set one (the upstream is then
	// the registry named in the reference).
	Server string
	// Mirrors are the file's [host] tables that can pull, in the order
	// the file lists them.
	Mirrors []remotecache.Mirror
	// Upstream holds the top-level settings, which are the server's:
	// its URL is Server (or "" when not set), and Resolve, Header and
	// Transport come from the top-level capabilities, header and TLS
	// settings. MirrorsFor decides whether it is tried.
	Upstream remotecache.Mirror
	// upstreamPull is false when the top-level capabilities leave out
	// "pull".
	upstreamPull bool
}

// MirrorsFor returns the mirrors a pull from registry tries, in order:
// c.Mirrors, then the server, when it can pull and either is a host other
// than registry, or is registry itself with headers or a transport of its
// own (the registry is then reached with them first).
func (c Config) MirrorsFor(registry string) []remotecache.Mirror {
	out := slices.Clone(c.Mirrors)
	if !c.upstreamPull {
		return out
	}
	up := c.Upstream
	if up.URL == "" || sameRegistry(up.URL, registry) {
		if up.Header == nil && up.Transport == nil {
			return out
		}
		r, err := name.NewRegistry(registry)
		if err != nil {
			return out
		}
		up.URL = r.Scheme() + "://" + r.RegistryStr()
	}
	return append(out, up)
}

// sameRegistry reports whether the server URL u is the registry reg
// (Docker Hub under any of its names).
func sameRegistry(u, reg string) bool {
	pu, err := url.Parse(u)
	if err != nil {
		return false
	}
	a, b := pu.Host, reg
	hub := func(h string) bool {
		return h == "docker.io" || h == name.DefaultRegistry || h == "registry-1.docker.io"
	}
	return a == b || hub(a) && hub(b)
}

// Lookup returns the configuration that applies to registry, as
// containerd finds it: the registry's own directory ("host_port_" before
// "host:port"), else Default. Docker Hub's directory is "docker.io",
// whichever of its names the reference uses.
func Lookup(configs map[string]Config, registry string) (Config, bool) {
	if c, ok := configs[registryName(registry)]; ok {
		return c, true
	}
	c, ok := configs[Default]
	return c, ok
}

// registryName is the name Load gives registry reg: Docker Hub's names
// become "docker.io".
func registryName(reg string) string {
	if reg == name.DefaultRegistry || reg == "registry-1.docker.io" {
		return "docker.io"
	}
	return reg
}

// Load reads the hosts.toml of every subdirectory of dir. The map's keys
// are registries as the directory names them ("docker.io",
// "registry.local:5000" for a directory "registry.local_5000_" or
// "registry.local:5000") and Default; entries of dir that are not
// directories are ignored. The first error is returned, and names the
// file it concerns.
func Load(dir string) (map[string]Config, error) {
	// Stat first: opening a FIFO given as dir would block.
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	configs := map[string]Config{}
	from := map[string]string{} // registry -> directory name, for conflicts
	for _, e := range entries {
		sub := filepath.Join(dir, e.Name())
		fi, err := os.Stat(sub) // a symlink to a directory counts
		if err != nil || !fi.IsDir() {
			continue
		}
		reg := dirRegistry(e.Name())
		if prev, ok := from[reg]; ok {
			return nil, fmt.Errorf("%s and %s both configure %s: remove one", filepath.Join(dir, prev), sub, reg)
		}
		c, err := loadDir(sub)
		if err != nil {
			return nil, err
		}
		from[reg] = e.Name()
		configs[reg] = c
	}
	return configs, nil
}

// dirRegistry is the registry a directory name configures: containerd's
// "host_port_" is "host:port".
func dirRegistry(dir string) string {
	if h, ok := strings.CutSuffix(dir, "_"); ok {
		if i := strings.LastIndexByte(h, '_'); i > 0 {
			if port := h[i+1:]; port != "" && strings.Trim(port, "0123456789") == "" {
				return h[:i] + ":" + port
			}
		}
	}
	return dir
}

// loadDir reads one registry's directory.
func loadDir(dir string) (Config, error) {
	file := filepath.Join(dir, FileName)
	b, err := readFile(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return loadCertFiles(dir)
	case err != nil:
		return Config{}, err
	}
	c, err := parse(file, b)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", file, err)
	}
	return c, nil
}

// readFile reads a regular file of at most maxFileSize bytes, without
// blocking on a FIFO or device planted at its name.
func readFile(file string) ([]byte, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", file)
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("%s: %d bytes, more than a hosts.toml holds (at most %d)", file, fi.Size(), maxFileSize)
	}
	return os.ReadFile(file)
}

// hostFields are the keys of a [host."URL"] table, and the top-level keys
// for the server.
type hostFields struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
	DialTimeout  string         `toml:"dial_timeout"`
}

type fileFields struct {
	Server string `toml:"server"`
	hostFields
	Host map[string]hostFields `toml:"host"`
}

// parse reads the hosts.toml at file, whose content is b.
func parse(file string, b []byte) (Config, error) {
	var f fileFields
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		return Config{}, err
	}
	if un := md.Undecoded(); len(un) > 0 {
		return Config{}, fmt.Errorf("unknown key %q", un[0].String())
	}
	base := filepath.Dir(file)
	c := Config{File: file}
	// The hosts in the order of the file: MetaData.Keys lists keys in
	// document order, each table's before its own keys.
	var order []string
	for _, k := range md.Keys() {
		if len(k) >= 2 && k[0] == "host" && !slices.Contains(order, k[1]) {
			order = append(order, k[1])
		}
	}
	for _, h := range order {
		m, pull, err := mirror(h, f.Host[h], base)
		if err != nil {
			return Config{}, fmt.Errorf("host %q: %w", h, err)
		}
		if pull {
			c.Mirrors = append(c.Mirrors, m)
		}
	}
	var up remotecache.Mirror
	if f.Server != "" {
		up, c.upstreamPull, err = mirror(f.Server, f.hostFields, base)
		if err != nil {
			return Config{}, fmt.Errorf("server %q: %w", f.Server, err)
		}
		c.Server = up.URL
	} else {
		// The registry itself: only its settings matter.
		var err error
		up, c.upstreamPull, err = settings(f.hostFields, base)
		if err != nil {
			return Config{}, err
		}
	}
	c.Upstream = up
	return c, nil
}

// mirror makes the Mirror of host URL u with settings h. pull is false
// when its capabilities leave out "pull".
func mirror(u string, h hostFields, base string) (m remotecache.Mirror, pull bool, err error) {
	m, pull, err = settings(h, base)
	if err != nil {
		return remotecache.Mirror{}, false, err
	}
	m.URL, err = mirrorURL(u, h.OverridePath)
	if err != nil {
		return remotecache.Mirror{}, false, err
	}
	if strings.HasPrefix(m.URL, "http://") {
		m.Transport = nil // TLS settings mean nothing over plain HTTP
		if h.DialTimeout != "" {
			d, _ := time.ParseDuration(h.DialTimeout) // settings checked it
			m.Transport = transport(nil, d)
		}
	}
	return m, pull, nil
}

// mirrorURL maps a host's URL, as containerd reads it, to Mirror.URL, in
// which a path is a repository prefix under /v2/.
func mirrorURL(raw string, overridePath bool) (string, error) {
	s := raw
	if !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
		if strings.Contains(s, "://") {
			return "", errors.New("the URL must start with http:// or https://")
		}
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	if u.Host == "" {
		return "", errors.New("no host")
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", errors.New("only scheme, host, port and path are allowed")
	}
	p := ""
	if u.Path != "" {
		p = path.Clean(u.Path)
	}
	switch {
	case p == "" || p == "/" || p == "/v2":
		p = ""
	case overridePath && strings.HasPrefix(p, "/v2/"):
		// The API root /v2/PREFIX: /v2/ with a repository prefix.
	case overridePath:
		return "", fmt.Errorf("API root %s: layercache reaches registries at /v2/ only; a path /v2/PREFIX names a repository prefix", p)
	default:
		return "", fmt.Errorf("path %s: without override_path it is an API root %s/v2, and layercache reaches registries at /v2/ only; for a repository prefix write %s://%s/v2/PREFIX with override_path = true", p, p, u.Scheme, u.Host)
	}
	out := u.Scheme + "://" + u.Host + p
	m := remotecache.Mirror{URL: out}
	if _, _, err := remotecache.ParseMirror("docker.io=" + m.URL); err != nil {
		return "", err
	}
	return out, nil
}

// settings reads the capabilities, TLS settings and headers of h into a
// Mirror without URL. pull is false when the capabilities leave out
// "pull".
func settings(h hostFields, base string) (m remotecache.Mirror, pull bool, err error) {
	pull, m.Resolve = true, true
	if len(h.Capabilities) > 0 {
		pull, m.Resolve = false, false
		for _, c := range h.Capabilities {
			switch strings.ToLower(c) {
			case "pull":
				pull = true
			case "resolve":
				m.Resolve = true
			case "push", "referrers":
			default:
				return remotecache.Mirror{}, false, fmt.Errorf("unknown capability %q: want pull, resolve, push or referrers", c)
			}
		}
	}
	if h.Header != nil {
		m.Header = http.Header{}
		for k, v := range h.Header {
			vs, err := stringList(v)
			if err != nil {
				return remotecache.Mirror{}, false, fmt.Errorf("header %q: %w", k, err)
			}
			for _, s := range vs {
				m.Header.Add(k, s)
			}
		}
	}
	var dial time.Duration
	if h.DialTimeout != "" {
		dial, err = time.ParseDuration(h.DialTimeout)
		if err != nil || dial <= 0 {
			return remotecache.Mirror{}, false, fmt.Errorf("dial_timeout %q: want a positive duration such as 1s", h.DialTimeout)
		}
	}
	cfg, err := tlsConfig(h, base)
	if err != nil {
		return remotecache.Mirror{}, false, err
	}
	if cfg != nil || dial > 0 {
		m.Transport = transport(cfg, dial)
	}
	return m, pull, nil
}

// tlsConfig is the TLS configuration of h's skip_verify, ca and client,
// or nil when it sets none of them (or only skip_verify = false).
func tlsConfig(h hostFields, base string) (*tls.Config, error) {
	var cfg *tls.Config
	get := func() *tls.Config {
		if cfg == nil {
			cfg = &tls.Config{}
		}
		return cfg
	}
	if h.SkipVerify != nil && *h.SkipVerify {
		get().InsecureSkipVerify = true
	}
	if h.CA != nil {
		paths, err := stringList(h.CA)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		for _, p := range paths {
			p = absPath(p, base)
			b, err := readFile(p)
			if err != nil {
				return nil, fmt.Errorf("ca: %w", err)
			}
			if !pool.AppendCertsFromPEM(b) {
				return nil, fmt.Errorf("ca %s: no PEM certificate in it", p)
			}
		}
		get().RootCAs = pool
	}
	if h.Client != nil {
		pairs, err := clientPairs(h.Client)
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		for _, pr := range pairs {
			cert, err := keyPair(absPath(pr[0], base), pr[1], base)
			if err != nil {
				return nil, fmt.Errorf("client: %w", err)
			}
			get().Certificates = append(get().Certificates, cert)
		}
	}
	return cfg, nil
}

// keyPair loads a client certificate and its key (from the certificate's
// file when key is "").
func keyPair(certFile, key, base string) (tls.Certificate, error) {
	certPEM, err := readFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM := certPEM
	if key != "" {
		key = absPath(key, base)
		if keyPEM, err = readFile(key); err != nil {
			return tls.Certificate{}, err
		}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s: %w", certFile, err)
	}
	return cert, nil
}

// clientPairs reads client's forms: a path, a list of paths, a list of
// [cert, key] pairs (key "" for a key in the certificate's file).
func clientPairs(v any) ([][2]string, error) {
	if s, ok := v.(string); ok {
		return [][2]string{{s, ""}}, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want a path or a list, got %T", v)
	}
	var out [][2]string
	for _, e := range list {
		if s, ok := e.(string); ok {
			out = append(out, [2]string{s, ""})
			continue
		}
		pair, err := stringList(e)
		if err != nil || len(pair) != 2 {
			return nil, fmt.Errorf("want a path or a [cert, key] pair, got %v", e)
		}
		out = append(out, [2]string{pair[0], pair[1]})
	}
	return out, nil
}

// stringList reads a string or a list of strings.
func stringList(v any) ([]string, error) {
	switch v := v.(type) {
	case string:
		return []string{v}, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("want strings, got %v", e)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a string or a list of strings, got %v", v)
}

func absPath(p, base string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}

// transport is a copy of ggcr's default transport with TLS configuration
// cfg (if not nil) and a dial timeout d (if not zero).
func transport(cfg *tls.Config, d time.Duration) http.RoundTripper {
	t := remote.DefaultTransport.(*http.Transport).Clone()
	if cfg != nil {
		t.TLSClientConfig = cfg
	}
	if d > 0 {
		t.DialContext = (&net.Dialer{Timeout: d, KeepAlive: 30 * time.Second}).DialContext
	}
	return t
}

// loadCertFiles reads a registry directory without hosts.toml as
// containerd does, as Docker's certs.d: *.crt files are CAs, and each
// *.cert file is a client certificate, with its key in the *.key file of
// the same name or, without one, in the certificate's own file. A
// directory without any is a configuration of no mirrors, which (as in
// containerd) keeps Default from applying to its registry.
func loadCertFiles(dir string) (Config, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return Config{}, err
	}
	var h hostFields
	var cas, clients []any
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasSuffix(n, ".crt"):
			cas = append(cas, n)
		case strings.HasSuffix(n, ".cert"):
			key := strings.TrimSuffix(n, ".cert") + ".key"
			if _, err := os.Stat(filepath.Join(dir, key)); err != nil {
				key = ""
			}
			clients = append(clients, []any{n, key})
		}
	}
	c := Config{File: dir, upstreamPull: true}
	if len(cas) == 0 && len(clients) == 0 {
		return c, nil
	}
	if len(cas) > 0 {
		h.CA = cas
	}
	if len(clients) > 0 {
		h.Client = clients
	}
	if c.Upstream, _, err = settings(h, dir); err != nil {
		return Config{}, fmt.Errorf("%s: %w", dir, err)
	}
	return c, nil
}
