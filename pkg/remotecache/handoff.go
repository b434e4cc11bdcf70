package remotecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Hashing each byte once on a miss.
//
// ggcr's blob readers verify the digest themselves, and the store's Writer
// hashes what it stores: reading a blob through ggcr into the store would
// hash every byte twice, which costs more than the download over a fast
// network. So remotecache installs handoffTransport as the innermost
// transport of ggcr's client: ggcr still does authentication, retries of
// failed requests, redirects and error handling, but when the final 200
// response of the blob GET that remotecache asked for arrives, the
// transport hands its body to remotecache and gives ggcr an error instead.
// remotecache then streams the raw body to its caller and the store, and
// the store's hasher alone verifies it.
//
// If the caller replaces the transport (remote.WithTransport inside
// WithRemote), the hand-off never happens and ggcr's verified reader is
// used: correct, with one extra hash. WithTransport keeps the hand-off.

// errHandedOff is what ggcr sees for a blob response remotecache took.
var errHandedOff = errors.New("remotecache: blob response handed to the cache")

type handoffKey struct{}

// handoff receives the blob response of one fetch. A fetch from offset >
// 0 asks for the rest of the blob with a Range header, and takes a 206 as
// well as a 200 (a registry may ignore the Range).
type handoff struct {
	d      digest.Digest
	offset int64
	size   int64 // the blob's, or -1
	mu     sync.Mutex
	resp   *http.Response
}

func (h *handoff) take() *http.Response {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.resp
	h.resp = nil
	return r
}

// withHandoff returns a context under which a GET of blob d (of size
// bytes, or -1), from offset on, is handed off.
func withHandoff(ctx context.Context, d digest.Digest, offset, size int64) (context.Context, *handoff) {
	h := &handoff{d: d, offset: offset, size: size}
	return context.WithValue(ctx, handoffKey{}, h), h
}

// handoffTransport is the innermost transport of the ggcr clients
// remotecache makes.
type handoffTransport struct {
	base http.RoundTripper
}

func (t *handoffTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h, _ := req.Context().Value(handoffKey{}).(*handoff)
	if h != nil && h.offset > 0 && req.Method == http.MethodGet && isBlobGet(req, h.d) {
		req = req.Clone(req.Context())
		req.Header.Set("Range", rangeFrom(h.offset, h.size))
	}
	resp, err := t.base.RoundTrip(req)
	partial := err == nil && resp.StatusCode == http.StatusPartialContent && h != nil && h.offset > 0
	if err != nil || (resp.StatusCode != http.StatusOK && !partial) || req.Method != http.MethodGet {
		return resp, err
	}
	if strings.Contains(req.URL.Path, "/manifests/") {
		// ggcr reads manifests whole, up to 100 MiB: the cache's limit
		// is held here, before ggcr allocates for a larger one.
		if resp.ContentLength > maxManifestSize {
			resp.Body.Close()
			return nil, fmt.Errorf("manifest at %s: %d bytes: %w", req.URL.Redacted(), resp.ContentLength, errTooLarge)
		}
		resp.Body = &capReader{rc: resp.Body, left: maxManifestSize, what: req.URL.Redacted()}
		if c, _ := req.Context().Value(claimKey{}).(*claim); c != nil {
			c.set(resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Content-Type"))
		}
		return resp, nil
	}
	if h == nil || !isBlobGet(req, h.d) {
		return resp, nil
	}
	h.mu.Lock()
	if h.resp != nil {
		// A retry produced a second response: keep the newest.
		h.resp.Body.Close()
	}
	h.resp = resp
	h.mu.Unlock()
	return nil, errHandedOff
}

// capReader fails once more than left bytes were read from rc.
type capReader struct {
	rc   io.ReadCloser
	left int64
	what string
}

func (c *capReader) Read(b []byte) (int, error) {
	if int64(len(b)) > c.left+1 {
		b = b[:c.left+1]
	}
	n, err := c.rc.Read(b)
	if int64(n) > c.left {
		return 0, fmt.Errorf("manifest at %s: %w", c.what, errTooLarge)
	}
	c.left -= int64(n)
	return n, err
}

func (c *capReader) Close() error { return c.rc.Close() }

// isBlobGet reports whether req fetches blob d: the registry's blob URL,
// or a redirect that started there (blob storage).
func isBlobGet(req *http.Request, d digest.Digest) bool {
	for r := req; r != nil; {
		if strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			return true
		}
		if r.Response == nil {
			return false
		}
		r = r.Response.Request
	}
	return false
}

// A manifest fetched by tag has no digest to check it against, but the
// registry names the digest of what it sends in the Docker-Content-Digest
// header, which ggcr does not compare with the body of a GET by tag. The
// same transport notes the header so that remotecache can: one GET by tag
// is then checked as well as a HEAD followed by a GET by digest.

type claimKey struct{}

// claim holds the headers of a manifest response. seen says the response
// went through handoffTransport at all: a transport of the caller's
// (WithRemote) replaces it, and then nothing is noted.
type claim struct {
	mu        sync.Mutex
	digest    string
	mediaType string
	seen      bool
}

func (c *claim) set(d, mediaType string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.digest, c.mediaType, c.seen = d, mediaType, true
}

func (c *claim) get() (d, mediaType string, seen bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.digest, c.mediaType, c.seen
}

// withClaim returns a context under which the headers of manifest
// responses are noted in c.
func withClaim(ctx context.Context) (context.Context, *claim) {
	c := &claim{}
	return context.WithValue(ctx, claimKey{}, c), c
}
