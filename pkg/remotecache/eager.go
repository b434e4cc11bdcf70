package remotecache

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/testhook"
)

// Asking for a tag without waiting for the handshake.
//
// Before its first request to a registry, ggcr pings it (GET /v2/) to
// learn whether and how to authenticate, and fetches a token if told to.
// Only then does it ask for the tag's manifest, and only after the
// manifest come the blobs: a cold pull costs three round trips one after
// the other before its first layer byte, and a pull of a cached image two
// before it knows the tag has not moved. Over a registry 20 ms away, that
// is a third of the time a warm of a small image takes.
//
// containerd sends its requests first and authenticates when one is
// answered 401. remotecache does the same for the one request that
// everything else waits for, the manifest's (a GET for a tag the cache
// has not recorded, a HEAD for one it has), when the pull is anonymous:
// no WithRemote options, and a WithKeychain, if any, that has no
// credentials for the registry. It sends that request itself, over the
// transport WithTransport gave (whatever headers that adds go with it),
// at once, while ggcr's handshake runs beside it. A registry that serves
// anonymous pulls (a local registry, a mirror, many in-house registries)
// answers 200, and the blobs follow one round trip earlier. Any other
// answer (401 from a registry that wants a token, even for anonymous
// pulls, as Docker Hub and ghcr.io do; a redirect; an error) is dropped,
// and the request goes through ggcr, whose handshake has
// meanwhile run. The early request is given as long again as the
// handshake took, at least eagerGraceMin, after the handshake is done:
// past that, ggcr asks instead, so a registry that is slow to answer
// anonymous requests costs at most one handshake's time more.
//
// The early request uses https, as ggcr's handshake tries first, except
// on loopback (localhost, 127.0.0.0/8, ::1), where local registries serve
// plain http and nothing else is on the path. A registry that ggcr may
// reach over either (name.Insecure, a private address) is left to ggcr's
// handshake to decide, and gets no early request.
//
// A GET's answer is checked against the digest the registry names in
// Docker-Content-Digest, in getByTag, as remotecache checks ggcr's (ggcr
// does not for a tag). A HEAD's digest names a manifest that is then read
// from the store, verified, or fetched by digest.

// eagerGraceMin is the least time an early request is given once the
// handshake beside it is done.
const eagerGraceMin = 50 * time.Millisecond

// noBlob names a blob that no registry holds. Asking ggcr's Puller for a
// Layer by it builds the Puller's client for the repository, which is the
// handshake, and sends nothing else: the layer is only fetched when read.
const noBlob = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

// handshake runs ggcr's ping and token fetch for the repository of ref,
// so that the Puller's requests find its client ready. ggcr forgets a
// failed handshake, and the next request through the Puller would try
// it all again, so when the early request failed too, its error is the
// pull's (eagerCall.hsErr).
func handshake(ctx context.Context, rp *remote.Puller, ref name.Reference) error {
	_, err := rp.Layer(ctx, ref.Context().Digest(noBlob))
	return err
}

// eagerManifestTypes are the manifests a pull can use, in ggcr's order of
// Accept. Schema 1 is left to ggcr, which refuses it with its own error.
var eagerManifestTypes = []types.MediaType{
	types.DockerManifestSchema2,
	types.OCIManifestSchema1,
	types.DockerManifestList,
	types.OCIImageIndex,
}

// eagerScheme is the scheme of the early request to reg, and whether to
// send one at all (see above).
func eagerScheme(reg name.Registry) (string, bool) {
	if reg.Scheme() == "https" {
		return "https", true
	}
	host := reg.RegistryStr()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return "http", true
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return "http", true
	}
	return "", false
}

// eagerGet sends the GET of ref's manifest without credentials and
// without waiting for ggcr's handshake (see above). ok reports a 200 with
// a manifest of a known type; raw is then the body, not checked yet, and
// claimed the Docker-Content-Digest header. Otherwise the caller asks
// through ggcr, unless err says why the pull cannot go on: a manifest
// too large, or a handshake that failed as well.
func (p *puller) eagerGet(ctx context.Context, rp *remote.Puller, ref name.Reference) (raw []byte, claimed string, ok bool, err error) {
	c := p.eagerStart(ctx, rp, ref)
	if resp, answered := p.eagerRequest(c, ref, http.MethodGet); answered {
		raw, err = io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
		resp.Body.Close()
		switch {
		case err == nil && len(raw) <= maxManifestSize:
			c.finish()
			return raw, resp.Header.Get("Docker-Content-Digest"), true, nil
		case err == nil:
			// ggcr would fetch it again only for getByTag to refuse it.
			c.finish()
			return nil, "", false, fmt.Errorf("manifest of %s: %w", ref, errTooLarge)
		}
		p.eagerFailed(ref, http.MethodGet, "body cut", "err", err)
	}
	return nil, "", false, c.finish()
}

// eagerHead is eagerGet for the HEAD that asks whether a recorded tag
// moved: d is the digest the registry names, when ok. err is the
// handshake's, when the HEAD and the handshake both failed.
func (p *puller) eagerHead(ctx context.Context, rp *remote.Puller, ref name.Reference) (d digest.Digest, ok bool, err error) {
	c := p.eagerStart(ctx, rp, ref)
	resp, ok := p.eagerRequest(c, ref, http.MethodHead)
	if ok {
		resp.Body.Close()
		if d, err = digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil {
			c.finish()
			return d, true, nil
		}
		p.eagerFailed(ref, http.MethodHead, "no valid Docker-Content-Digest", "err", err)
	}
	return "", false, c.finish()
}

// eagerCall is an early request and the handshake beside it.
type eagerCall struct {
	ctx      context.Context // of the early request
	cancel   context.CancelFunc
	hs       chan struct{} // closed when the handshake is done
	hsErr    error         // the handshake's error, once hs is closed
	answered chan struct{} // closed when the early request has its answer's headers
}

// eagerStart starts ggcr's handshake, and a watch that cancels the early
// request if it has no answer once the handshake has been done for as
// long as it took (at least eagerGraceMin). An answer that has begun is
// read to its end, as ggcr's would be.
//
// Tests that count requests turn the watch off with a context from
// testhook.WithoutEagerGrace: the early request then ends only when it is
// answered, fails, or ctx is done. Outside tests the watch always runs.
func (p *puller) eagerStart(ctx context.Context, rp *remote.Puller, ref name.Reference) *eagerCall {
	ectx, cancel := context.WithCancel(ctx)
	c := &eagerCall{ctx: ectx, cancel: cancel, hs: make(chan struct{}), answered: make(chan struct{})}
	began := time.Now()
	go func() {
		defer close(c.hs)
		c.hsErr = handshake(ctx, rp, ref)
	}()
	if testhook.NoEagerGrace(ctx) {
		return c
	}
	go func() {
		select {
		case <-c.hs:
		case <-c.answered:
			return
		case <-ectx.Done():
			return
		}
		t := time.NewTimer(max(time.Since(began), eagerGraceMin))
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-c.answered:
		case <-ectx.Done():
		}
	}()
	return c
}

// finish ends the early request and waits for the handshake, which the
// pull needs next (or, when everything is cached, which must not outlive
// the call), and returns the handshake's error.
func (c *eagerCall) finish() error {
	c.cancel()
	<-c.hs
	return c.hsErr
}

// eagerRequest sends method (GET or HEAD) for ref's manifest, without
// credentials, as c's early request. ok reports a 200 of a known
// manifest type, whose body the caller closes.
func (p *puller) eagerRequest(c *eagerCall, ref name.Reference, method string) (*http.Response, bool) {
	repo := ref.Context()
	scheme, _ := eagerScheme(repo.Registry)
	u := url.URL{
		Scheme: scheme,
		Host:   repo.RegistryStr(),
		Path:   fmt.Sprintf("/v2/%s/manifests/%s", repo.RepositoryStr(), ref.Identifier()),
	}
	req, err := http.NewRequestWithContext(c.ctx, method, u.String(), nil)
	if err != nil {
		p.eagerFailed(ref, method, "bad request", "err", err)
		return nil, false
	}
	accept := make([]string, len(eagerManifestTypes))
	for i, mt := range eagerManifestTypes {
		accept[i] = string(mt)
	}
	req.Header.Set("Accept", strings.Join(accept, ","))
	// The transport under ggcr's, without its retries: a failure here
	// costs nothing, since ggcr then asks with its own.
	resp, err := transport.NewUserAgent(p.o.transport, p.o.userAgent).RoundTrip(req)
	if err != nil {
		p.eagerFailed(ref, method, "no answer", "err", err)
		return nil, false
	}
	close(c.answered)
	p.o.logger.Debug(method+" of the tag's manifest sent beside the handshake", "ref", ref.Name(), "status", resp.StatusCode)
	why, args := "", []any(nil)
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK {
		why, args = "answered "+resp.Status, []any{"status", resp.StatusCode}
	} else if !slices.Contains(eagerManifestTypes, types.MediaType(mt)) {
		why, args = "unexpected media type", []any{"mediaType", mt}
	}
	if why != "" {
		// Drain a little, so that the connection can serve ggcr next.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		p.eagerFailed(ref, method, why, args...)
		return nil, false
	}
	return resp, true
}

// eagerFailed logs why the early request is not used.
func (p *puller) eagerFailed(ref name.Reference, method, why string, args ...any) {
	p.o.logger.Debug(method+" of the tag's manifest before the handshake: "+why+"; asking through ggcr",
		append([]any{"ref", ref.Name()}, args...)...)
}
