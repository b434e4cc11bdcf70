package serve

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
)

// tags serves tags/list: the upstream's list when online; offline, the
// tags of the repository that index.json records. n and last page the
// list as the spec says (lexical order, after last, at most n, with a
// Link header to the next page).
func (h *Handler) tags(w *logWriter, r *http.Request, repo name.Repository) {
	q := r.URL.Query()
	n := -1
	if v := q.Get("n"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 0 {
			writeError(w, r, &apiError{http.StatusBadRequest, codeUnsupported, "invalid n " + strconv.Quote(v)})
			return
		}
		n = k
	}
	var tags []string
	if h.offline {
		w.cache = "hit"
		refs, err := h.s.Refs(r.Context())
		if err != nil {
			writeError(w, r, &apiError{http.StatusInternalServerError, codeNameUnknown, "reading index.json: " + err.Error()})
			return
		}
		prefix := repo.Name() + ":"
		for _, ref := range refs {
			if tag, ok := strings.CutPrefix(ref.Annotations["org.opencontainers.image.ref.name"], prefix); ok {
				tags = append(tags, tag)
			}
		}
		if len(tags) == 0 {
			writeError(w, r, &apiError{http.StatusNotFound, codeNameUnknown, repo.Name() + " has no tags in the cache, and serve is offline"})
			return
		}
	} else {
		w.cache = "miss"
		var err error
		tags, err = remote.List(repo, append(h.remoteOptions(r), remote.WithPageSize(1000))...)
		if err != nil {
			writeError(w, r, h.pullError(err, codeNameUnknown, "tags of "+repo.Name()))
			return
		}
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if last := q.Get("last"); last != "" {
		i, _ := slices.BinarySearch(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	if n >= 0 && n < len(tags) {
		tags = tags[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {tags[n-1]}}
			if ns := q.Get("ns"); ns != "" {
				next.Set("ns", ns)
			}
			w.Header().Set("Link", "<"+r.URL.Path+"?"+next.Encode()+`>; rel="next"`)
		}
	}
	if tags == nil {
		tags = []string{}
	}
	// The name is the one the client asked for, as it knows it.
	body, _ := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list"), tags})
	writeJSON(w, r, "application/json", body)
}

// referrers serves the referrers API from the upstream (ggcr's
// remote.Referrers, which falls back to the tag schema for registries
// without the API), with the artifactType filter passed on.
func (h *Handler) referrers(w *logWriter, r *http.Request, repo name.Repository, d digest.Digest) {
	if h.offline {
		writeError(w, r, &apiError{http.StatusNotFound, codeUnsupported, "referrers are not cached, and serve is offline"})
		return
	}
	w.cache = "miss"
	opts := h.remoteOptions(r)
	at := r.URL.Query().Get("artifactType")
	if at != "" {
		opts = append(opts, remote.WithFilter("artifactType", at))
	}
	idx, err := remote.Referrers(repo.Digest(d.String()), opts...)
	if err != nil {
		writeError(w, r, h.pullError(err, codeManifestUnknown, "referrers of "+d.String()))
		return
	}
	raw, err := idx.RawManifest()
	if err != nil {
		writeError(w, r, h.pullError(err, codeManifestUnknown, "referrers of "+d.String()))
		return
	}
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	writeJSON(w, r, "application/vnd.oci.image.index.v1+json", raw)
}

// remoteOptions are the options of a request passed through to the
// upstream: the caller's (keychain, transport), bound to the request.
func (h *Handler) remoteOptions(r *http.Request) []remote.Option {
	return append(h.o.Remote[:len(h.o.Remote):len(h.o.Remote)], remote.WithContext(r.Context()))
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}
