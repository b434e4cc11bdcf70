package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/internal/serve"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

// shutdownGrace bounds how long serve waits, after SIGINT or SIGTERM, for
// the responses in flight and the downloads that outlived their clients;
// those left then are cut (a cut download keeps its partial file).
const shutdownGrace = 30 * time.Second

// printConfigKinds are the clients --print-config knows.
var printConfigKinds = []string{"containerd", "buildkit", "docker", "podman"}

func newServeCmd(g *globals) *cobra.Command {
	var (
		addr        string
		upstream    string
		insecure    bool
		resolveOpts resolveFlags
		printConfig string
		mirrors     mirrorOpts
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the cache as a local registry mirror for docker, BuildKit, containerd, podman, skopeo and crane",
		Long: `Serve the pull side of the OCI distribution API from the cache, so that any
client that can use a registry mirror pulls through it: docker, BuildKit,
containerd, nerdctl, podman, skopeo, crane.

A blob found in the cache is verified against its digest before its first byte
is sent. A miss is fetched from the upstream registry and streamed to the
client while it is written to the cache; it is committed only when every byte
matched its digest, and one download serves every serve and warm process on
this host. A client that disconnects leaves the download going on into the
cache. Tags are recorded in the cache's index.json and resolve from it when
the upstream cannot be reached (see --resolve), as with warm. Push, delete and
upload requests are refused (UNSUPPORTED): the cache is only filled by pulls.

The upstream of a request is, first match wins:
  - containerd's ?ns=REGISTRY parameter (containerd, BuildKit, nerdctl);
  - a first path component that names a registry (it holds a "." or a ":",
    or is localhost): /v2/REGISTRY/REPO/... (podman, skopeo, crane);
  - --upstream, which may carry a port (127.0.0.1:5000);
  - docker.io, with library/ added to one-word names (docker).

Once listening, serve prints "layercache serve: listening on http://HOST:PORT
(cache DIR)" on stderr, then one access log line per request (method, path,
status, bytes, hit or miss, duration, upstream repository), or one JSON
object per line with --json. It binds loopback by default, and warns when
--addr is another address: serve has no authentication. SIGINT or SIGTERM
stops it: it stops accepting connections, lets the responses in flight and
the downloads left by clients that went away finish (at most 30 s), and
exits 0.

--print-config KIND prints, on stdout, the configuration that points a client
at this server and exits: containerd's hosts.toml, BuildKit's buildkitd.toml,
docker's daemon.json (docker mirrors docker.io only), or podman's
registries.conf.`,
		Example: `  # Serve the project's cache on 127.0.0.1:5050
  layercache serve

  # Pick a free port; the first stderr line says which
  layercache serve --addr 127.0.0.1:0

  # Pull through it with skopeo or crane, naming the upstream in the path
  skopeo copy --src-tls-verify=false docker://127.0.0.1:5050/docker.io/library/alpine:3 oci:alpine
  crane pull --insecure 127.0.0.1:5050/ghcr.io/owner/app:v1 app.tar

  # Point containerd at it for docker.io
  layercache serve --print-config containerd | sudo tee /etc/containerd/certs.d/docker.io/hosts.toml

  # A local registry as the upstream of one-word and unprefixed names
  layercache serve --upstream 127.0.0.1:5000

  # Only what the cache holds, no network
  layercache serve --offline`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if printConfig != "" {
				return printServeConfig(g, printConfig, addr, upstream, insecure)
			}
			// The listening line is the first of stderr: scripts wait
			// for it. What is logged before it (a warning of the
			// store, -v's debug lines) is held back until it is out.
			held := &heldWriter{w: g.stderr}
			defer held.release("")
			g.stderr, g.log = held, g.newLogger(held)
			policy, err := resolveOpts.policy(cmd.Flags())
			if err != nil {
				return err
			}
			mopts, configs, err := mirrors.load(g.log)
			if err != nil {
				return err
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			var access slog.Handler = slog.NewTextHandler(g.stderr, nil)
			if g.json {
				access = slog.NewJSONHandler(g.stderr, nil)
			}
			o := serve.Options{
				Upstream: upstream,
				Offline:  policy == remotecache.ResolveOffline,
				Insecure: insecure,
				Pull: append([]remotecache.Option{
					remotecache.WithKeychain(authn.DefaultKeychain),
					remotecache.WithUserAgent("layercache"),
					remotecache.WithLogger(g.log),
					remotecache.WithResolve(policy),
				}, mopts...),
				Remote:    []remote.Option{remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithUserAgent("layercache")},
				AccessLog: slog.New(access),
			}
			if configs != nil {
				o.Mirrors = func(reg string) []remotecache.Option { return hostsMirrors(configs, reg, g.log) }
			}
			h, err := serve.New(s, o)
			if err != nil {
				return usagef("--upstream: %w", err)
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("--addr %s: %w", addr, err)
			}
			held.release(fmt.Sprintf("layercache serve: listening on http://%s (cache %s)\n", ln.Addr(), s.Dir()))
			if !isLoopback(addr) {
				fmt.Fprintf(g.stderr, "layercache serve: warning: %s is not a loopback address; anyone who can reach it can pull through this cache (serve has no authentication)\n", addr)
			}
			return runServer(cmd.Context(), g, serve.NewServer(h), h, ln)
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:5050", "listen on `HOST:PORT` (port 0 picks a free one)")
	f.StringVar(&upstream, "upstream", "", "the `REGISTRY` of names that carry none (default docker.io); may have a port")
	resolveOpts.add(f)
	f.BoolVar(&insecure, "insecure", false, "allow plain HTTP to upstream registries")
	f.StringVar(&printConfig, "print-config", "", "print the configuration of a client (`KIND`: "+strings.Join(printConfigKinds, ", ")+") pointing at --addr, and exit")
	addMirrorFlags(cmd, &mirrors)
	return cmd
}

// runServer serves on ln until ctx is done (SIGINT or SIGTERM), then shuts
// down: no new connections, the responses in flight and the downloads that
// outlived their clients finish within shutdownGrace, and the rest is cut.
func runServer(ctx context.Context, g *globals, srv *http.Server, h *serve.Handler, ln net.Listener) error {
	srv.ErrorLog = slog.NewLogLogger(g.log.Handler(), slog.LevelWarn)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		h.Shutdown(context.Background())
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	fmt.Fprintln(g.stderr, "layercache serve: shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if herr := h.Shutdown(sctx); err == nil {
		err = herr
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	if err != nil {
		// Past the grace: what was left has been cut, and the cache
		// holds none of it half-committed. Not a failure of serve.
		fmt.Fprintf(g.stderr, "layercache serve: cut what was still running after %s: %v\n", shutdownGrace, err)
	}
	return nil
}

// heldWriter holds what is written to it until release, which writes a
// line first, then what was held, and lets later writes through.
type heldWriter struct {
	mu   sync.Mutex
	w    io.Writer
	held []byte
	open bool
}

func (h *heldWriter) Write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.open {
		h.held = append(h.held, b...)
		return len(b), nil
	}
	return h.w.Write(b)
}

// release writes first, then what was held; later calls do nothing.
func (h *heldWriter) release(first string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.open {
		return
	}
	h.open = true
	io.WriteString(h.w, first)
	h.w.Write(h.held)
	h.held = nil
}

// isLoopback reports whether addr (HOST:PORT) binds loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// printServeConfig writes the configuration of a client of kind that
// points it at the server on addr, for the registry upstream (docker.io
// when empty).
func printServeConfig(g *globals, kind, addr, upstream string, insecure bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return usagef("--addr %s: %w", addr, err)
	}
	if port == "0" {
		return usagef("--print-config needs the port the server listens on, not --addr %s", addr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1" // a server on every address is reached on loopback here
	}
	server := net.JoinHostPort(host, port)
	reg := "docker.io"
	if upstream != "" {
		r, err := name.NewRegistry(upstream, name.StrictValidation)
		if err != nil {
			return usagef("--upstream: %w", err)
		}
		if reg = upstream; r.RegistryStr() == name.DefaultRegistry {
			reg = "docker.io"
		}
	}
	w := g.stdout
	switch kind {
	case "containerd":
		return containerdConfig(w, server, reg, insecure)
	case "buildkit":
		fmt.Fprintf(w, "# buildkitd.toml: pull %s through layercache serve\n", reg)
		fmt.Fprintf(w, "[registry.%q]\n  mirrors = [%q]\n\n", reg, server)
		fmt.Fprintf(w, "[registry.%q]\n  http = true\n", server)
		return nil
	case "docker":
		if reg != "docker.io" {
			// docker asks its mirror for docker.io's images without a
			// prefix, which serve would send to --upstream.
			return usagef("--print-config docker: docker mirrors docker.io only, and serve would send its requests to --upstream %s; leave --upstream out", upstream)
		}
		fmt.Fprintln(g.stderr, "# docker's registry-mirrors applies to docker.io only; merge into /etc/docker/daemon.json and restart dockerd")
		return json.NewEncoder(w).Encode(map[string][]string{"registry-mirrors": {"http://" + server}})
	case "podman":
		// A path prefix cannot carry a port: a registry with one is
		// reached through --upstream, without a prefix.
		location := server + "/" + reg
		if strings.Contains(reg, ":") {
			location = server
		}
		fmt.Fprintf(w, "# registries.conf (or a file in /etc/containers/registries.conf.d/): pull %s through layercache serve\n", reg)
		fmt.Fprintf(w, "[[registry]]\nprefix = %q\nlocation = %q\n\n[[registry.mirror]]\nlocation = %q\ninsecure = true\n", reg, reg, location)
		return nil
	}
	return usagef("--print-config: unknown kind %q: want %s", kind, strings.Join(printConfigKinds, ", "))
}

// containerdConfig writes the hosts.toml of registry reg, for containerd's
// certs.d directory, with the server as a mirror that pulls and resolves.
// containerd names the registry in ?ns=, which serve routes by.
func containerdConfig(w io.Writer, server, reg string, insecure bool) error {
	scheme := "https"
	if r, err := name.NewRegistry(reg); err == nil && (insecure || r.Scheme() == "http") {
		scheme = "http"
	}
	upstreamURL := scheme + "://" + reg
	if reg == "docker.io" {
		upstreamURL = "https://registry-1.docker.io"
	}
	fmt.Fprintf(w, "# /etc/containerd/certs.d/%s/hosts.toml: pull %s through layercache serve\n", reg, reg)
	fmt.Fprintf(w, "server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", upstreamURL, "http://"+server)
	return nil
}
