package remotecache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/ocibuild/layercache/pkg/store"
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
	// (custom TLS: a CA of its own, or skipping verification). Unset, the
	// mirror uses WithTransport's; a transport given through WithRemote
	// is the upstream's alone.
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

// host is one place a pull asks: a mirror, or the upstream registry.
type host struct {
	name   string          // the mirror's URL, or the upstream's registry
	repo   name.Repository // the pulled repository, on this host
	mirror *Mirror         // nil for the upstream

	once  sync.Once
	rp    *remote.Puller
	rpErr error
}

// hosts are the places a pull asks, in order: the mirrors of the
// upstream's registry (WithMirrors), then the upstream. A mirror whose
// URL does not make a repository is left out (WithMirrors checked it).
func (p *puller) hosts() []*host {
	p.hostsOnce.Do(func() {
		for _, m := range p.o.mirrors[p.repo.RegistryStr()] {
			r, err := m.repository(p.repo)
			if err != nil {
				continue
			}
			p.hostList = append(p.hostList, &host{name: m.URL, repo: r, mirror: &m})
		}
		p.hostList = append(p.hostList, &host{name: p.repo.RegistryStr(), repo: p.repo})
	})
	return p.hostList
}

// remoteOf returns the ggcr puller of host h: the pull's own for the
// upstream, one of its own for a mirror, with the mirror's headers and
// transport under the hand-off, and credentials from the keychain for the
// mirror's own host.
func (p *puller) remoteOf(ctx context.Context, h *host) (*remote.Puller, error) {
	if h.mirror == nil {
		return p.remote(ctx)
	}
	h.once.Do(func() {
		base := p.o.transport
		if h.mirror.Transport != nil {
			base = h.mirror.Transport
		}
		if len(h.mirror.Header) > 0 {
			base = &headerTransport{base: base, header: h.mirror.Header}
		}
		ro := []remote.Option{remote.WithJobs(p.o.jobs)}
		if p.o.userAgent != "" {
			ro = append(ro, remote.WithUserAgent(p.o.userAgent))
		}
		if p.o.keychain != nil {
			ro = append(ro, remote.WithAuthFromKeychain(p.o.keychain))
		}
		// The transport comes after the caller's options: a transport
		// given in WithRemote is the upstream's, and would drop the
		// mirror's headers, CA and the hand-off.
		ro = append(ro, p.o.remote...)
		ro = append(ro, remote.WithTransport(&handoffTransport{base: base}), remote.WithContext(p.o.ctx))
		h.rp, h.rpErr = remote.NewPuller(ro...)
	})
	return h.rp, h.rpErr
}

// headerTransport adds a mirror's headers to every request.
type headerTransport struct {
	base   http.RoundTripper
	header http.Header
}

func (t *headerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	for k, v := range t.header {
		req.Header[k] = v
	}
	return t.base.RoundTrip(req)
}

// passOver reports whether err from a host means the next host should be
// asked: the host could not be reached, or answered 404, 429 or a 5xx.
// Anything else (a 401 for want of credentials, say) is the pull's error.
func passOver(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return terr.StatusCode == http.StatusNotFound || terr.StatusCode == http.StatusTooManyRequests || terr.StatusCode >= 500
	}
	return unreachable(ctx, err)
}

// passedOver warns, once per host and kind of failure, that host h was
// passed over for the next.
func (p *puller) passedOver(h *host, kind string, err error) {
	p.o.warnOnce.warn("mirror "+h.name+" "+kind, "mirror passed over; asking the next host",
		"mirror", h.name, "why", kind, "err", err)
}

// failureKind names err for passedOver's one warning per kind.
func failureKind(err error) string {
	var terr *transport.Error
	if errors.As(err, &terr) {
		return strconv.Itoa(terr.StatusCode)
	}
	if errors.Is(err, store.ErrDigestMismatch) {
		return "wrong bytes"
	}
	return "unreachable"
}
