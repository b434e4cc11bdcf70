package remotecache

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

// Transport returns an http.RoundTripper for remote.WithTransport that
// serves registry GETs of blobs and of manifests by digest from the store
// s, and tees misses into it:
//
//	img, err := remote.Image(ref, remote.WithTransport(remotecache.Transport(s, remote.DefaultTransport)))
//
// Only GET /v2/<name>/blobs/<digest> and GET /v2/<name>/manifests/<digest>
// without a Range header are served; everything else (tags, HEAD, pushes,
// token requests) goes to inner untouched. A cached blob is verified before
// its response is returned; a cached manifest carries its Content-Type,
// Content-Length and Docker-Content-Digest. On a blob miss the transport
// follows the registry's redirects to blob storage itself and stores the
// body as the caller reads it, committing only a whole, matching blob.
// inner nil means http.DefaultTransport.
//
// ggcr verifies blobs again behind a transport, so this path hashes each
// byte twice; remotecache.Image hashes once.
func Transport(s *store.Store, inner http.RoundTripper) http.RoundTripper {
	if inner == nil {
		inner = http.DefaultTransport
	}
	return &transportCache{s: s, inner: inner}
}

type transportCache struct {
	s     *store.Store
	inner http.RoundTripper
}

// registryPath matches the distribution API paths the transport serves.
var registryPath = regexp.MustCompile(`^/v2/(.+)/(blobs|manifests)/([^/]+)$`)

// maxRedirects bounds the redirects a blob GET follows, as net/http does.
const maxRedirects = 10

func (t *transportCache) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet || req.Header.Get("Range") != "" {
		return t.inner.RoundTrip(req)
	}
	m := registryPath.FindStringSubmatch(req.URL.Path)
	if m == nil {
		return t.inner.RoundTrip(req)
	}
	d := digest.Digest(m[3])
	if layout.Validate(d) != nil {
		return t.inner.RoundTrip(req) // a tag, or a digest we do not store
	}
	if m[2] == "manifests" {
		return t.manifest(req, d)
	}
	return t.blob(req, d)
}

func (t *transportCache) manifest(req *http.Request, d digest.Digest) (*http.Response, error) {
	ctx := req.Context()
	if b, err := t.s.Get(ctx, d); err == nil {
		return t.response(req, d, string(sniffMediaType(b)), int64(len(b)), io.NopCloser(bytes.NewReader(b))), nil
	}
	resp, err := t.inner.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if len(b) <= maxManifestSize && d.Algorithm().FromBytes(b) == d {
		// Best effort: a read-only or full cache still answers.
		_ = t.s.PutVerified(ctx, d, int64(len(b)), bytes.NewReader(b))
	}
	// Wrong bytes are handed on as they came: ggcr checks the digest
	// of manifests fetched by digest and reports the mismatch.
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	return resp, nil
}

func (t *transportCache) blob(req *http.Request, d digest.Digest) (*http.Response, error) {
	ctx := req.Context()
	if rc, info, err := t.s.OpenVerified(ctx, d); err == nil {
		return t.response(req, d, "application/octet-stream", info.Size, rc), nil
	}
	unlock, lerr := t.s.LockBlob(ctx, d)
	if unlock == nil {
		return nil, lerr
	}
	if rc, info, err := t.s.OpenVerified(ctx, d); err == nil {
		unlock()
		return t.response(req, d, "application/octet-stream", info.Size, rc), nil
	}
	resp, err := t.follow(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		unlock()
		return resp, err
	}
	var w *store.Writer
	if lerr == nil {
		w, err = t.s.NewWriter(ctx, d, resp.ContentLength)
		if err != nil {
			w = nil
		}
	}
	// ggcr verifies the body above this transport, so without a Writer
	// the tee only passes it through.
	resp.Body = &teeReader{d: d, from: req.URL.Host, size: resp.ContentLength, src: resp.Body, w: w, unlock: unlock}
	return resp, nil
}

// follow sends req and follows redirects, so the response holds the blob
// itself and the tee sees its bytes. Authorization is dropped when a
// redirect leaves the registry's host, as net/http does.
func (t *transportCache) follow(req *http.Request) (*http.Response, error) {
	cur := req
	for i := 0; ; i++ {
		resp, err := t.inner.RoundTrip(cur)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
			http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			return resp, nil
		}
		loc, err := resp.Location()
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("redirect from %s: %w", cur.URL.Redacted(), err)
		}
		if i >= maxRedirects {
			return nil, fmt.Errorf("GET %s: stopped after %d redirects", req.URL.Redacted(), maxRedirects)
		}
		next, err := http.NewRequestWithContext(req.Context(), http.MethodGet, loc.String(), nil)
		if err != nil {
			return nil, err
		}
		for k, v := range cur.Header {
			if k == "Authorization" && loc.Host != req.URL.Host {
				continue
			}
			next.Header[k] = v
		}
		cur = next
	}
}

func (t *transportCache) response(req *http.Request, d digest.Digest, mediaType string, size int64, body io.ReadCloser) *http.Response {
	h := http.Header{}
	h.Set("Content-Type", mediaType)
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	h.Set("Docker-Content-Digest", d.String())
	return &http.Response{
		Status:        "200 OK",
		StatusCode:    http.StatusOK,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          body,
		ContentLength: size,
		Request:       req,
	}
}
