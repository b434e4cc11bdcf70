package remotecache

import (
	"bytes"
	"context"
	"errors"
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

// blob serves a blob GET through the fetch step (fetchstep.go): a hit
// verified before its response is returned, a miss streamed from the
// registry into the store under the blob's lock, resumed where a cut
// broke it. Any answer of the registry but the blob's bytes (a 401 that
// ggcr answers with a token, a 404) is returned to ggcr as it came.
func (t *transportCache) blob(req *http.Request, d digest.Digest) (*http.Response, error) {
	ctx := req.Context()
	if rc, info, err := t.s.OpenVerified(ctx, d); err == nil {
		return t.response(req, d, "application/octet-stream", info.Size, rc), nil
	}
	step := &fetchStep{s: t.s, d: d, size: -1, from: req.URL.Host, src: t.source(req)}
	rc, cached, err := step.open(ctx)
	var answer *answerError
	switch {
	case errors.As(err, &answer):
		return answer.resp, nil
	case err != nil:
		return nil, err
	case cached:
		info, err := t.s.Stat(ctx, d)
		if err != nil {
			rc.Close()
			return nil, err
		}
		return t.response(req, d, "application/octet-stream", info.Size, rc), nil
	}
	return t.response(req, d, "application/octet-stream", rc.(*teeReader).size, rc), nil
}

// answerError carries a registry's answer that is not a blob's bytes, for
// blob to hand back to ggcr unchanged.
type answerError struct{ resp *http.Response }

func (e *answerError) Error() string { return "registry answered " + e.resp.Status }

// source opens the blob req asks for, from offset on (a Range request),
// following redirects to blob storage.
func (t *transportCache) source(req *http.Request) source {
	size := int64(-1) // the blob's, once an answer said it
	var src source
	src = func(ctx context.Context, offset int64) (io.ReadCloser, int64, int64, bool, error) {
		r := req
		if offset > 0 {
			r = req.Clone(ctx)
			r.Header.Set("Range", rangeFrom(offset, size))
		}
		resp, err := t.follow(r)
		if err != nil {
			return nil, 0, 0, false, err
		}
		if resp.StatusCode != http.StatusOK && (offset == 0 || resp.StatusCode != http.StatusPartialContent) {
			if offset > 0 {
				// A registry that refuses the Range: ask for the whole blob.
				resp.Body.Close()
				return src(ctx, 0)
			}
			return nil, 0, 0, false, &answerError{resp}
		}
		start, total, ok := rangeStart(resp, offset)
		if !ok {
			resp.Body.Close()
			return src(ctx, 0)
		}
		if total >= 0 {
			size = total
		}
		return resp.Body, start, total, true, nil
	}
	return src
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
