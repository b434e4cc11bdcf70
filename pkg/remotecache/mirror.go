package remotecache

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Mirror is a registry host that a pull tries, in order, before the
// upstream registry: a pull-through mirror such as the CNCF distribution
// registry in proxy mode, Harbor's proxy cache or zot's on-demand sync.
// It has the capabilities of containerd's hosts.toml: every mirror serves
// blobs and manifests by digest ("pull"); tags are asked of it only when
// Resolve is set ("resolve").
type Mirror struct {
	// URL is scheme://host[:port][/prefix]. http is used as given (a
	// mirror on the runner's own network); a path is a prefix of the
	// repository on the mirror (Harbor's proxy project, say).
	URL string
	// Resolve lets tags be resolved through the mirror.
	Resolve bool
	// Header is added to every request to the mirror.
	Header http.Header
	// Transport, if set, replaces the pull's transport for this mirror
	// (custom TLS: a CA of its own, or skipping verification).
	Transport http.RoundTripper
}

// WithMirrors sets the mirrors of the upstream registry reg, tried in the
// order given before it, for blobs and manifests by digest, and for tags
// when a mirror has Resolve. A mirror that cannot be reached, or answers
// 404, 429 or a 5xx, is passed over for the next host, with one warning
// per mirror and kind of failure; bytes from a mirror that do not match
// their digest are never cached, and the next host is asked. Credentials
// come from the keychain (WithKeychain) for each mirror's own host. reg
// "docker.io" also matches references written without a registry. Given
// again for the same registry, the mirrors are added after the earlier
// ones. The default is no mirrors.
func WithMirrors(reg string, mirrors ...Mirror) Option {
	return func(o *options) error {
		key, err := registryKey(reg)
		if err != nil {
			return fmt.Errorf("remotecache.WithMirrors: %w", err)
		}
		for _, m := range mirrors {
			if _, err := m.repository(name.Repository{}); err != nil {
				return fmt.Errorf("remotecache.WithMirrors(%s): %w", reg, err)
			}
		}
		if o.mirrors == nil {
			o.mirrors = map[string][]Mirror{}
		}
		o.mirrors[key] = append(o.mirrors[key], mirrors...)
		return nil
	}
}

// registryKey is the name ggcr gives registry reg, so that "docker.io"
// and references without a registry ("index.docker.io") meet.
func registryKey(reg string) (string, error) {
	r, err := name.NewRegistry(reg)
	if err != nil {
		return "", err
	}
	return r.RegistryStr(), nil
}

// repository is the repository of upstream repo on the mirror: the same
// path, under the mirror's prefix. With a zero repo it only checks the URL.
func (m Mirror) repository(repo name.Repository) (name.Repository, error) {
	u, err := url.Parse(m.URL)
	switch {
	case err != nil:
		return name.Repository{}, fmt.Errorf("mirror %q: %w", m.URL, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return name.Repository{}, fmt.Errorf("mirror %q: the URL must start with http:// or https://", m.URL)
	case u.Host == "":
		return name.Repository{}, fmt.Errorf("mirror %q: no host", m.URL)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return name.Repository{}, fmt.Errorf("mirror %q: only scheme, host, port and path are allowed", m.URL)
	}
	var opts []name.Option
	if u.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	path := strings.Trim(u.Path, "/")
	path = strings.TrimPrefix(strings.TrimPrefix(path, "v2"), "/")
	if _, err := name.NewRegistry(u.Host, opts...); err != nil {
		return name.Repository{}, fmt.Errorf("mirror %q: %w", m.URL, err)
	}
	if repo.RepositoryStr() == "" {
		return name.Repository{}, nil
	}
	full := repo.RepositoryStr()
	if path != "" {
		full = path + "/" + full
	}
	r, err := name.NewRepository(u.Host+"/"+full, opts...)
	if err != nil {
		return name.Repository{}, fmt.Errorf("mirror %q: %w", m.URL, err)
	}
	return r, nil
}

// ParseMirror reads "REGISTRY=URL", the form of --mirror and of each
// comma-separated item of LAYERCACHE_MIRRORS. The mirror serves blobs and
// manifests by digest, not tags: a hosts.toml says more.
func ParseMirror(s string) (reg string, m Mirror, err error) {
	reg, u, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok || reg == "" || u == "" {
		return "", Mirror{}, fmt.Errorf("mirror %q: want REGISTRY=URL", s)
	}
	if _, err := registryKey(reg); err != nil {
		return "", Mirror{}, fmt.Errorf("mirror %q: %w", s, err)
	}
	m = Mirror{URL: u}
	if _, err := m.repository(name.Repository{}); err != nil {
		return "", Mirror{}, err
	}
	return reg, m, nil
}

// errNoHost is what a pull reports when every host was passed over.
var errNoHost = errors.New("no host could serve it")
