package serve

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// manifest serves GET and HEAD of a manifest or index, by tag or digest,
// through remotecache.Manifest: verified from the store, or fetched
// (and a tag recorded in index.json), with the media type its bytes
// declare.
func (h *Handler) manifest(w *logWriter, r *http.Request, repo name.Repository, ref string) {
	var nref name.Reference
	if strings.Contains(ref, ":") {
		d, aerr := parseDigest(ref)
		if aerr != nil {
			writeError(w, r, aerr)
			return
		}
		nref = repo.Digest(d.String())
	} else {
		if !tagName.MatchString(ref) {
			writeError(w, r, &apiError{http.StatusBadRequest, codeManifestInvalid, "invalid tag " + strconv.Quote(ref)})
			return
		}
		nref = repo.Tag(ref)
	}
	var c remotecache.Counters
	desc, raw, err := remotecache.Manifest(r.Context(), nref, h.s, h.pullOptions(repo, &c)...)
	// A hit when nothing was fetched: the manifest came from the store
	// (a tag asked upstream with a HEAD still counts as a hit).
	w.cache = "miss"
	if c.Fetched().Blobs == 0 && (c.Cached().Blobs > 0 || err == nil) {
		w.cache = "hit"
	}
	if err != nil {
		writeError(w, r, h.pullError(err, codeManifestUnknown, "manifest "+nref.String()))
		return
	}
	mt := string(desc.MediaType)
	if mt == "" {
		mt = "application/octet-stream"
	}
	w.Header().Set("Content-Type", mt)
	w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
	w.Header().Set("Docker-Content-Digest", desc.Digest.String())
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(raw)
	}
}
