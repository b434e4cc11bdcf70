// Package wirecount counts the blob bytes a registry client reads off the
// wire, so that an example can show what a pull really downloaded, apart
// from what the layer cache served.
//
// It is a measuring aid for the examples, not part of layercache: a tool
// needs none of it to use the cache.
package wirecount

import (
	"io"
	"net/http"
	"regexp"
	"sync/atomic"
)

// blobPath matches GET /v2/<name>/blobs/<digest> of the distribution API.
var blobPath = regexp.MustCompile(`^/v2/.+/blobs/[^/]+$`)

// Transport is an http.RoundTripper that counts the bytes of blob
// responses read through it: responses to GET /v2/<name>/blobs/<digest>,
// and to the redirects such a GET is sent on (registries often serve
// blobs from object storage). Manifests, tag lookups, token requests and
// pushes pass through uncounted. Bytes are counted as the caller reads
// them, so a blob read halfway counts halfway.
//
// Hand it to go-containerregistry with remote.WithTransport. The zero
// value forwards to http.DefaultTransport. It is safe for concurrent use;
// do not copy it after first use.
type Transport struct {
	// Inner sends the requests. Nil means http.DefaultTransport.
	Inner http.RoundTripper

	blobs atomic.Int64
	bytes atomic.Int64
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	inner := t.Inner
	if inner == nil {
		inner = http.DefaultTransport
	}
	resp, err := inner.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK || !isBlobGET(req) {
		return resp, err
	}
	t.blobs.Add(1)
	resp.Body = &countingBody{ReadCloser: resp.Body, n: &t.bytes}
	return resp, nil
}

// BlobBytes returns the blob bytes read so far.
func (t *Transport) BlobBytes() int64 { return t.bytes.Load() }

// Blobs returns how many blob responses were received so far.
func (t *Transport) Blobs() int64 { return t.blobs.Load() }

// isBlobGET reports whether req fetches a blob, directly or as the
// redirect of a blob GET. net/http sets req.Response only on requests it
// makes to follow a redirect.
func isBlobGET(req *http.Request) bool {
	if req.Method != http.MethodGet {
		return false
	}
	for r := req; r != nil; {
		if blobPath.MatchString(r.URL.Path) {
			return true
		}
		if r.Response == nil {
			return false
		}
		r = r.Response.Request
	}
	return false
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
