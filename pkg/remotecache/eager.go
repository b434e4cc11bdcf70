package remotecache

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
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
// has not recorded, a HEAD for one it has), when it knows the pull sends
// no credentials anyway (no WithRemote options, and a WithKeychain, if
// any, that has none for the registry): it sends that request itself, at
// once, while ggcr's handshake runs beside it. A registry that serves
// anonymous pulls (a local registry, a mirror, many in-house registries)
// answers 200, and the blobs follow one round trip earlier. Any other
// answer (401 from a registry that wants a token, even for anonymous
// pulls, as Docker Hub and ghcr.io do; a redirect; an error) is dropped,
// and the request goes through ggcr as before, whose handshake has
// meanwhile run: no later than before, with one extra request.
//
// A GET's answer is checked as ggcr's would be: against the digest named
// in Docker-Content-Digest, in getByTag. A HEAD's digest names a manifest
// that is then read from the store, verified, or fetched by digest.

// noBlob names a blob that no registry holds. Asking ggcr's Puller for a
// Layer by it builds the Puller's client for the repository, which is the
// handshake, and sends nothing else: the layer is only fetched when read.
const noBlob = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

// handshake runs ggcr's ping and token fetch for the repository of ref,
// so that the Puller's later requests find its client ready. Its error,
// if any, is the one those requests will report (ggcr forgets a failed
// handshake and tries again), so it is not kept here.
func handshake(ctx context.Context, rp *remote.Puller, ref name.Reference) {
	_, _ = rp.Layer(ctx, ref.Context().Digest(noBlob))
}

// eagerManifestTypes are the manifests a pull can use, in ggcr's order of
// Accept. Schema 1 is left to ggcr, which refuses it with its own error.
var eagerManifestTypes = []types.MediaType{
	types.DockerManifestSchema2,
	types.OCIManifestSchema1,
	types.DockerManifestList,
	types.OCIImageIndex,
}

// eagerGet sends the GET of ref's manifest without credentials and
// without waiting for ggcr's handshake, which it starts beside it. ok
// reports a 200 with a manifest of a known type; raw is then the body,
// not checked yet, and claimed the Docker-Content-Digest header.
// Otherwise the caller asks through ggcr.
func (p *puller) eagerGet(ctx context.Context, rp *remote.Puller, ref name.Reference) (raw []byte, claimed string, ok bool) {
	resp, ok := p.eagerRequest(ctx, rp, ref, http.MethodGet)
	if !ok {
		return nil, "", false
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	switch {
	case err != nil:
		p.eagerFailed(ref, http.MethodGet, "body cut", "err", err)
		return nil, "", false
	case len(raw) > maxManifestSize:
		p.eagerFailed(ref, http.MethodGet, "manifest too large", "limit", maxManifestSize)
		return nil, "", false
	}
	return raw, resp.Header.Get("Docker-Content-Digest"), true
}

// eagerHead is eagerGet for the HEAD that asks whether a recorded tag
// moved: d is the digest the registry names, when ok.
func (p *puller) eagerHead(ctx context.Context, rp *remote.Puller, ref name.Reference) (d digest.Digest, ok bool) {
	resp, ok := p.eagerRequest(ctx, rp, ref, http.MethodHead)
	if !ok {
		return "", false
	}
	resp.Body.Close()
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		p.eagerFailed(ref, http.MethodHead, "no valid Docker-Content-Digest", "err", err)
		return "", false
	}
	return d, true
}

// eagerRequest starts ggcr's handshake and sends method (GET or HEAD) for
// ref's manifest beside it, without credentials. ok reports a 200 of a
// known manifest type, whose body the caller closes.
func (p *puller) eagerRequest(ctx context.Context, rp *remote.Puller, ref name.Reference, method string) (*http.Response, bool) {
	go handshake(ctx, rp, ref)
	repo := ref.Context()
	u := url.URL{
		Scheme: repo.Registry.Scheme(),
		Host:   repo.RegistryStr(),
		Path:   fmt.Sprintf("/v2/%s/manifests/%s", repo.RepositoryStr(), ref.Identifier()),
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
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
	if resp.StatusCode != http.StatusOK {
		// Drain a little, so that the connection can serve ggcr next.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		p.eagerFailed(ref, method, "answered "+resp.Status, "status", resp.StatusCode)
		return nil, false
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if !slices.Contains(eagerManifestTypes, types.MediaType(mt)) {
		resp.Body.Close()
		p.eagerFailed(ref, method, "unexpected media type", "mediaType", mt)
		return nil, false
	}
	return resp, true
}

// eagerFailed logs why the early request is not used.
func (p *puller) eagerFailed(ref name.Reference, method, why string, args ...any) {
	p.o.logger.Debug(method+" of the tag's manifest before the handshake: "+why+"; asking through ggcr",
		append([]any{"ref", ref.Name()}, args...)...)
}
