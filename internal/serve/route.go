package serve

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/layout"
)

// Paths of the distribution API. uploadsPath is matched before blobsPath.
var (
	manifestsPath = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)
	uploadsPath   = regexp.MustCompile(`^/v2/(.+)/blobs/uploads(/.*)?$`)
	blobsPath     = regexp.MustCompile(`^/v2/(.+)/blobs/([^/]+)$`)
	tagsPath      = regexp.MustCompile(`^/v2/(.+)/tags/list$`)
	referrersPath = regexp.MustCompile(`^/v2/(.+)/referrers/([^/]+)$`)
)

// Grammar of the distribution spec and of docker's reference package.
var (
	// repoPath is a repository name: lowercase components separated by
	// "/", each starting and ending with a letter or digit, so that no
	// component is empty, "." or "..".
	repoPath = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	// tagName is a tag.
	tagName = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	// registryHost is a registry: a host name or IPv4 address, or an
	// IPv6 address in brackets, with an optional port.
	registryHost = regexp.MustCompile(`^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$`)
)

// maxNameLength bounds a repository name with its registry, as
// distribution does (255).
const maxNameLength = 255

// checkRegistry checks a registry named by ?ns=, a path prefix or
// Options.Upstream.
func checkRegistry(reg string) error {
	if len(reg) > maxNameLength || !registryHost.MatchString(reg) {
		return fmt.Errorf("invalid registry %q", reg)
	}
	if _, err := name.NewRegistry(reg, name.StrictValidation); err != nil {
		return fmt.Errorf("invalid registry %q: %w", reg, err)
	}
	return nil
}

// isRegistry reports whether the first component of a path names a
// registry, as docker decides: it holds a "." or a ":", or is localhost.
func isRegistry(component string) bool {
	return strings.ContainsAny(component, ".:") || component == "localhost"
}

// repository finds the upstream repository a request names: the registry
// from ?ns=, else from the path's first component when that is a host,
// else Options.Upstream, else docker.io (where ggcr adds library/ to a
// one-word name, as docker does).
func (h *Handler) repository(r *http.Request, path string) (name.Repository, *apiError) {
	invalid := func(format string, args ...any) (name.Repository, *apiError) {
		return name.Repository{}, &apiError{http.StatusBadRequest, codeNameInvalid, fmt.Sprintf(format, args...)}
	}
	reg := ""
	if ns, ok := r.URL.Query()["ns"]; ok {
		if len(ns) != 1 || checkRegistry(ns[0]) != nil {
			return invalid("invalid ns parameter %q: want one registry host", strings.Join(ns, ","))
		}
		reg = ns[0]
	} else if first, rest, ok := strings.Cut(path, "/"); ok && isRegistry(first) {
		if checkRegistry(first) != nil {
			return invalid("invalid registry %q in the path", first)
		}
		reg, path = first, rest
	}
	if reg == "" {
		reg = h.o.Upstream
	}
	if reg == "" {
		reg = name.DefaultRegistry
	}
	if (reg == name.DefaultRegistry || reg == "index.docker.io") && !strings.Contains(path, "/") {
		path = "library/" + path // as docker does
	}
	if len(reg)+1+len(path) > maxNameLength || !repoPath.MatchString(path) {
		return invalid("invalid repository name %q", path)
	}
	opts := []name.Option{name.StrictValidation}
	if h.o.Insecure {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(reg+"/"+path, opts...)
	if err != nil {
		return invalid("invalid repository name %q: %v", path, err)
	}
	return repo, nil
}

// parseDigest checks a digest from a path: the store's grammar (sha256 or
// sha512, lowercase hex of the right length), before anything builds a
// path from it.
func parseDigest(s string) (digest.Digest, *apiError) {
	d := digest.Digest(s)
	if err := layout.Validate(d); err != nil {
		return "", &apiError{http.StatusBadRequest, codeDigestInvalid, fmt.Sprintf("invalid digest %q", s)}
	}
	return d, nil
}

// route dispatches a request of the distribution API.
func (h *Handler) route(w *logWriter, r *http.Request) {
	// The path as sent, not decoded: an escaped "/" or "." never
	// becomes part of the grammar, and fails it.
	p := r.URL.EscapedPath()
	if !strings.HasPrefix(p, "/v2/") && p != "/v2" {
		writeError(w, r, &apiError{http.StatusNotFound, codeUnsupported, "not a path of the distribution API"})
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, r, &apiError{http.StatusMethodNotAllowed, codeUnsupported,
			"layercache serve is a read-only mirror: " + r.Method + " is not supported"})
		return
	}
	if p == "/v2" || p == "/v2/" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			w.Write([]byte("{}"))
		}
		return
	}
	if m := uploadsPath.FindStringSubmatch(p); m != nil {
		writeError(w, r, &apiError{http.StatusMethodNotAllowed, codeUnsupported, "layercache serve is a read-only mirror: uploads are not supported"})
		return
	}
	var (
		m    []string
		kind string
	)
	for _, c := range []struct {
		re   *regexp.Regexp
		kind string
	}{{manifestsPath, "manifests"}, {blobsPath, "blobs"}, {tagsPath, "tags"}, {referrersPath, "referrers"}} {
		if m = c.re.FindStringSubmatch(p); m != nil {
			kind = c.kind
			break
		}
	}
	if m == nil {
		writeError(w, r, &apiError{http.StatusNotFound, codeUnsupported, "not a path of the distribution API's pull side"})
		return
	}
	repo, aerr := h.repository(r, m[1])
	if aerr != nil {
		writeError(w, r, aerr)
		return
	}
	w.name = repo.Name()
	switch kind {
	case "manifests":
		h.manifest(w, r, repo, m[2])
	case "blobs":
		d, aerr := parseDigest(m[2])
		if aerr != nil {
			writeError(w, r, aerr)
			return
		}
		h.blob(w, r, repo, d)
	case "tags":
		h.tags(w, r, repo)
	case "referrers":
		d, aerr := parseDigest(m[2])
		if aerr != nil {
			writeError(w, r, aerr)
			return
		}
		h.referrers(w, r, repo, d)
	}
}
