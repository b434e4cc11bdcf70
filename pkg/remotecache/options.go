package remotecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Option configures Image, Index and Warm.
type Option func(*options) error

type options struct {
	ctx          context.Context
	transport    http.RoundTripper
	remote       []remote.Option
	keychain     authn.Keychain
	userAgent    string
	platform     *v1.Platform
	allPlatforms bool
	attestations bool // WithAttestations
	offline      bool // ResolveOffline
	resolve      ResolvePolicy
	mirrors      map[string][]Mirror // by registryKey of the upstream
	jobs         int
	logger       *slog.Logger
	progress     func(Progress)
	counters     *Counters
	warnOnce     *warnings
}

// DefaultJobs is how many blobs Warm fetches or verifies at once unless
// WithJobs says otherwise. Fetching is bound by round trips more than by
// CPU, so it is enough for the config and layers of most images in one
// wave: an image of 8 layers behind a registry 20 ms away, open to
// anonymous pulls, warms in two round trips one after the other (the
// manifest beside ggcr's handshake, then the blobs) instead of ten (see
// bench/ row 8).
// Hashing, the CPU part, runs on every core whatever the number, one
// cached blob per core at a time.
const DefaultJobs = 16

func makeOptions(opts []Option) (*options, error) {
	o := &options{
		ctx:       context.Background(),
		transport: remote.DefaultTransport,
		jobs:      DefaultJobs,
		logger:    slog.New(slog.DiscardHandler),
	}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	if o.offline && len(o.remote) > 0 {
		// Not an error: the remote options are simply unused. Kept
		// silent so that a tool can pass both from flags.
		o.remote = nil
	}
	o.warnOnce = &warnings{log: o.logger}
	return o, nil
}

// remoteOptions are the options handed to ggcr: the hand-off transport
// (see handoff.go) first, so that a transport in the caller's options
// replaces it; then the caller's; then the context and platform this
// package was given, so that those win.
func (o *options) remoteOptions() []remote.Option {
	// ggcr lets only 4 blob requests wait for their response at once
	// (remote.WithJobs, default 4): Warm's jobs would queue behind it,
	// and the layers of an image behind a far registry would come in
	// several waves of round trips instead of one.
	ro := []remote.Option{remote.WithTransport(&handoffTransport{base: o.transport}), remote.WithJobs(o.jobs)}
	if o.userAgent != "" {
		ro = append(ro, remote.WithUserAgent(o.userAgent))
	}
	ro = append(ro, o.remote...)
	ro = append(ro, remote.WithContext(o.ctx))
	if o.platform != nil {
		ro = append(ro, remote.WithPlatform(*o.platform))
	}
	return ro
}

// WithRemote passes options through to go-containerregistry's remote
// package for every registry request: authentication
// (remote.WithAuthFromKeychain), transport, user agent, retries. Options
// given here that this package also sets (context, platform) are
// overridden by WithContext and WithPlatform. The default is ggcr's
// defaults: anonymous access over remote.DefaultTransport.
//
// remotecache cannot see inside these options, so with any of them it
// takes the pull to be authenticated and lets ggcr's handshake with the
// registry come first; WithKeychain and WithUserAgent avoid that.
func WithRemote(opts ...remote.Option) Option {
	return func(o *options) error {
		o.remote = append(o.remote, opts...)
		return nil
	}
}

// WithKeychain sets where the registry credentials come from, as
// remote.WithAuthFromKeychain does (crane and ko use
// authn.DefaultKeychain). Prefer it to passing that through WithRemote:
// when the keychain has no credentials for the registry, remotecache then
// knows the pull is anonymous, and asks for the tag's manifest without
// waiting for ggcr's handshake with the registry (see eager.go). A
// keychain given in WithRemote replaces this one; remote.WithAuth in
// WithRemote conflicts with it, and ggcr refuses the pair. The default is
// anonymous access.
func WithKeychain(kc authn.Keychain) Option {
	return func(o *options) error {
		if kc == nil {
			return errors.New("remotecache.WithKeychain: nil keychain")
		}
		o.keychain = kc
		return nil
	}
}

// WithUserAgent adds ua to the User-Agent of every registry request, as
// remote.WithUserAgent does; prefer it to passing that through WithRemote
// for the same reason as WithKeychain. The default is ggcr's.
func WithUserAgent(ua string) Option {
	return func(o *options) error {
		o.userAgent = ua
		return nil
	}
}

// WithTransport sets the HTTP transport under ggcr's authentication and
// retries, for proxies, custom TLS or test servers. Prefer it to passing
// remote.WithTransport through WithRemote: that works too, but then each
// byte of a download is hashed twice (by ggcr and by the cache) instead of
// once. The default is remote.DefaultTransport.
func WithTransport(t http.RoundTripper) Option {
	return func(o *options) error {
		if t == nil {
			return errors.New("remotecache.WithTransport: nil transport")
		}
		o.transport = t
		return nil
	}
}

// WithOffline never touches the network: tags resolve from index.json,
// and a blob that is not cached is an error. It is WithResolve(ResolveOffline).
// The default is ResolveFallback.
func WithOffline() Option {
	return WithResolve(ResolveOffline)
}

// ResolvePolicy says whether a tag may be resolved from the cache's
// index.json instead of the registry. Blobs and manifests by digest are
// verified on every read whatever the policy; tags are the one thing a
// restored cache can claim that no digest checks, so trusting them is a
// choice (the three match those proposed for BuildKit, buildkit#706).
type ResolvePolicy int

const (
	// ResolveFallback asks the registry, and uses the tag the cache
	// recorded when the registry cannot be reached: a refused, reset or
	// timed-out connection, a failed DNS lookup, a 5xx, or a 429 (a rate
	// limit). It trusts index.json as it is, including one restored from
	// a CI cache. The default.
	ResolveFallback ResolvePolicy = iota
	// ResolveRemote always asks the registry, and fails when it cannot.
	ResolveRemote
	// ResolveOffline never asks: tags resolve from index.json, and the
	// network is not used at all (WithOffline).
	ResolveOffline
)

var resolveNames = [...]string{ResolveFallback: "fallback", ResolveRemote: "remote", ResolveOffline: "offline"}

// String returns the policy's name, as ParseResolvePolicy reads it.
func (r ResolvePolicy) String() string {
	if r >= 0 && int(r) < len(resolveNames) {
		return resolveNames[r]
	}
	return fmt.Sprintf("ResolvePolicy(%d)", int(r))
}

// ParseResolvePolicy reads "remote", "fallback" or "offline".
func ParseResolvePolicy(s string) (ResolvePolicy, error) {
	for i, n := range resolveNames {
		if s == n {
			return ResolvePolicy(i), nil
		}
	}
	return 0, fmt.Errorf("unknown resolve policy %q: want remote, fallback or offline", s)
}

// WithResolve sets when a tag may be resolved from the cache's index.json
// (see ResolvePolicy). The default is ResolveFallback.
func WithResolve(r ResolvePolicy) Option {
	return func(o *options) error {
		if r < ResolveFallback || r > ResolveOffline {
			return fmt.Errorf("remotecache.WithResolve: unknown policy %d", int(r))
		}
		o.resolve = r
		o.offline = r == ResolveOffline
		return nil
	}
}

// WithContext sets the context of every operation, including the later
// calls on the returned image and its layers (RawConfigFile, Compressed,
// ...), since ggcr's v1.Image methods take none. Warm takes its context as
// an argument instead. The default is context.Background().
func WithContext(ctx context.Context) Option {
	return func(o *options) error {
		if ctx == nil {
			return errors.New("remotecache.WithContext: nil context")
		}
		o.ctx = ctx
		return nil
	}
}

// WithPlatform selects the image of an image index to use. The default is
// linux/amd64, as in ggcr.
func WithPlatform(p v1.Platform) Option {
	return func(o *options) error {
		o.platform = &p
		return nil
	}
}

// WithAllPlatforms makes Warm warm every image of an index, not just the
// one of the platform. The default is one platform.
func WithAllPlatforms() Option {
	return func(o *options) error {
		o.allPlatforms = true
		return nil
	}
}

// WithJobs bounds how many blobs Warm fetches or verifies at once, and
// how many blob requests ggcr lets wait for the registry at once (its
// remote.WithJobs; a WithRemote option may set that apart). It must be at
// least 1. The default is DefaultJobs.
func WithJobs(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return errors.New("remotecache.WithJobs: jobs must be at least 1")
		}
		o.jobs = n
		return nil
	}
}

// WithLogger sets where warnings (a corrupted blob healed, a read-only or
// full cache, a tag resolved offline) and debug events go. The default
// discards them.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l != nil {
			o.logger = l
		}
		return nil
	}
}

// WithProgress reports each blob Warm handles: once when it starts and
// as its bytes arrive, and once when it is done. fn may be called from
// several goroutines at once. The default reports nothing.
func WithProgress(fn func(Progress)) Option {
	return func(o *options) error {
		o.progress = fn
		return nil
	}
}

// WithCounters adds the blobs of this pull (or Warm) to c, split into
// served from the cache and fetched from the registry, so a tool can say
// what its own build downloaded. The default counts nothing.
func WithCounters(c *Counters) Option {
	return func(o *options) error {
		o.counters = c
		return nil
	}
}

// warnings logs each kind of degradation once per operation, so that a
// read-only cache gives one warning, not one per blob.
type warnings struct {
	log  *slog.Logger
	mu   sync.Mutex
	seen map[string]bool
}

func (w *warnings) warn(kind, msg string, args ...any) {
	w.mu.Lock()
	if w.seen == nil {
		w.seen = map[string]bool{}
	}
	first := !w.seen[kind]
	w.seen[kind] = true
	w.mu.Unlock()
	if first {
		w.log.Warn(msg, args...)
	}
}
