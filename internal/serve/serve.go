// Package serve puts a layercache store behind the pull side of the OCI
// distribution API, so that clients that cannot link Go (docker, BuildKit,
// containerd, podman, skopeo, crane) use the cache as a registry mirror.
//
// The design, in the order a request meets it:
//
//   - Routing (route.go): every request names its upstream registry, by
//     containerd's ?ns= query parameter, by a first path component that
//     is a host (/v2/<registry>/<repo>/...), by Options.Upstream, or else
//     docker.io. Names, registries, tags and digests are checked against
//     the distribution grammar before anything else happens, and a digest
//     is validated by layout.Validate before the store builds a path from
//     it. Only GET and HEAD are served; every push, delete and upload
//     endpoint answers 405 UNSUPPORTED.
//   - Manifests (manifest.go) come from remotecache.Manifest: a digest
//     from the store, verified; a tag from the upstream (recorded in
//     index.json) or, as the resolve policy allows, from index.json.
//   - Blobs (blob.go) come from remotecache.Blob: a hit verified before
//     its first byte; a miss through the fetch step, streamed to the
//     client while it is written to the store under the blob's lock, so
//     that one download serves every serve and warm process on the host.
//     A Range is cut out of the stream; the whole blob still goes into
//     the store.
//   - A download outlives its request: when the client goes away, or
//     asked for a range, the rest of the blob is read into the store in
//     the background, under the same lock, with a context detached from
//     the request that Shutdown cancels. A download cut that way is never
//     committed; its partial file is resumed by the next one.
//   - tags/list and referrers are passed through to the upstream (ggcr's
//     remote.List and remote.Referrers); offline, tags/list answers from
//     index.json.
//   - Errors carry the spec's codes in its JSON body (errors.go); an
//     upstream that cannot be reached for something the cache does not
//     hold is a 502 that says so.
//   - Each request gives one access log record (log.go): method, path,
//     status, bytes, hit or miss, duration, and the upstream repository
//     it was routed to.
package serve

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// Options configure a Handler. The zero value serves docker.io online.
type Options struct {
	// Upstream is the registry of names that carry none (no ?ns= and no
	// registry as their first path component), as name.NewRegistry reads
	// it; it may have a port. The default is docker.io.
	Upstream string
	// Offline never asks an upstream: tags resolve from index.json, and
	// what the cache does not hold is unknown.
	Offline bool
	// Insecure reaches upstreams over plain HTTP. Loopback registries are
	// reached over HTTP anyway, as ggcr does.
	Insecure bool
	// Pull are the options of every manifest and blob pull: mirrors,
	// keychain, transport, resolve policy, logger.
	Pull []remotecache.Option
	// Mirrors, if set, returns the options that set the mirrors of a
	// registry (remotecache.WithMirrors), asked for each request: for
	// mirrors configured per registry, such as containerd's hosts.toml
	// with its _default, which no list made in advance can hold.
	Mirrors func(registry string) []remotecache.Option
	// Remote are the options of the requests passed through to the
	// upstream (tags/list, referrers): keychain, transport.
	Remote []remote.Option
	// AccessLog gets one record per request. Nil logs nothing.
	AccessLog *slog.Logger
}

// Handler serves the pull side of the distribution API from a store. It
// is safe for concurrent use. Call Shutdown once the http.Server that
// serves it has shut down, to end the downloads that outlived their
// requests.
type Handler struct {
	s       *store.Store
	o       Options
	offline bool

	bg       context.Context // of downloads, detached from requests
	bgCancel context.CancelFunc

	// The downloads running in the background: a count, and a channel
	// closed when it falls to zero. (A WaitGroup cannot be added to
	// while Shutdown waits, and a handler may still start one then.)
	bgMu   sync.Mutex
	bgN    int
	bgIdle chan struct{}
}

// New returns a Handler serving s.
func New(s *store.Store, o Options) (*Handler, error) {
	if o.Upstream != "" {
		if err := checkRegistry(o.Upstream); err != nil {
			return nil, err
		}
	}
	if o.AccessLog == nil {
		o.AccessLog = slog.New(slog.DiscardHandler)
	}
	h := &Handler{s: s, o: o, offline: o.Offline}
	if o.Offline {
		h.o.Pull = append(append([]remotecache.Option(nil), o.Pull...), remotecache.WithOffline())
	}
	h.bg, h.bgCancel = context.WithCancel(context.Background())
	return h, nil
}

// Shutdown waits for the downloads that outlived their requests (see
// blob.go) until ctx is done, then cancels those left, which keep their
// partial files for the next download, and waits for them to end.
func (h *Handler) Shutdown(ctx context.Context) error {
	err := h.waitBackground(ctx)
	h.bgCancel()
	h.waitBackground(context.Background())
	return err
}

// waitBackground waits until no download runs in the background, or ctx
// is done.
func (h *Handler) waitBackground(ctx context.Context) error {
	for {
		h.bgMu.Lock()
		if h.bgN == 0 {
			h.bgMu.Unlock()
			return nil
		}
		idle := h.bgIdle
		h.bgMu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// background runs fn, a download's end, beside the requests until it
// returns; Shutdown waits for it.
func (h *Handler) background(fn func()) {
	h.bgMu.Lock()
	if h.bgN == 0 {
		h.bgIdle = make(chan struct{})
	}
	h.bgN++
	h.bgMu.Unlock()
	go func() {
		defer func() {
			h.bgMu.Lock()
			h.bgN--
			if h.bgN == 0 {
				close(h.bgIdle)
			}
			h.bgMu.Unlock()
		}()
		fn()
	}()
}

// pullOptions are the options of the pull of one request from repo,
// counting into c.
func (h *Handler) pullOptions(repo name.Repository, c *remotecache.Counters) []remotecache.Option {
	opts := append([]remotecache.Option(nil), h.o.Pull...)
	if h.o.Mirrors != nil {
		opts = append(opts, h.o.Mirrors(repo.RegistryStr())...)
	}
	return append(opts, remotecache.WithCounters(c))
}

// MaxHeaderBytes bounds the header of a request: clients of the pull API
// send a few hundred bytes (a token is the largest part, a few KiB).
const MaxHeaderBytes = 64 << 10

// ReadHeaderTimeout bounds how long a client may take to send its header,
// so that idle connections cannot hold the server's sockets.
const ReadHeaderTimeout = 30 * time.Second

// NewServer returns an http.Server for h with bounded request headers. A
// header over MaxHeaderBytes is refused by net/http itself with a 431,
// before any handler runs. Responses have no write timeout: a blob may be
// gigabytes on a slow link.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
	}
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	// On every answer, as distribution sends it: clients check it on
	// /v2/, and some on errors too.
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	lw := &logWriter{ResponseWriter: w}
	defer func() {
		h.logRequest(r, lw, time.Since(start))
	}()
	h.route(lw, r)
}

// errClientGone stands for a client that went away mid-response.
var errClientGone = errors.New("client went away")
