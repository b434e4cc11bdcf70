package remotecache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

// maxManifestSize bounds manifests and configs read into memory, as
// registries do (distribution refuses manifests over 4 MiB): the store's
// own bound on whole-blob reads, so that what a pull fetches, the store
// can read back.
const maxManifestSize = store.MaxBlobInMemory

// ErrOffline is returned when a blob or a tag is needed from the registry
// but the operation is offline (WithOffline, or the registry cannot be
// reached) and the cache does not hold it.
var ErrOffline = errors.New("not in the cache, and the registry is not used (offline)")

// puller holds what every fetch of one pull needs.
type puller struct {
	s       *store.Store
	o       *options
	repo    name.Repository
	offline bool // set by WithOffline, or when the registry could not be reached
	stats   *counters

	rpOnce    sync.Once
	rp        *remote.Puller // shared by every request of the pull, so ggcr pings and authenticates once
	rpErr     error
	anonymous bool // the pull sends no credentials, as far as remotecache can tell (see eager.go)

	hostsOnce sync.Once
	hostList  []*host // mirrors, then the upstream (see hosts)
}

// resolved is a keychain that has resolved already.
type resolved struct{ auth authn.Authenticator }

func (r resolved) Resolve(authn.Resource) (authn.Authenticator, error) { return r.auth, nil }

// remote returns the ggcr puller of this pull.
func (p *puller) remote(ctx context.Context) (*remote.Puller, error) {
	p.rpOnce.Do(func() {
		ro := p.o.remoteOptions()
		_, early := eagerScheme(p.repo.Registry)
		p.anonymous = early && len(p.o.remote) == 0
		if kc := p.o.keychain; kc != nil {
			// Resolved here, when an early request is possible at all,
			// to know whether the pull is anonymous, and handed to ggcr
			// resolved, so that credential helpers run once. A keychain
			// that fails is left to ggcr, which fails the same way when
			// it makes its first request: the pull's error is then the
			// keychain's, as through WithRemote.
			if p.anonymous {
				auth, err := authn.Resolve(ctx, kc, p.repo)
				if err == nil {
					kc = resolved{auth}
				} else {
					p.o.logger.Debug("keychain failed; leaving it to ggcr", "repo", p.repo.Name(), "err", err)
				}
				p.anonymous = err == nil && auth == authn.Anonymous
			}
			// Before the caller's own options: a keychain given in
			// WithRemote replaces it.
			ro = append([]remote.Option{remote.WithAuthFromKeychain(kc)}, ro...)
		}
		p.rp, p.rpErr = remote.NewPuller(ro...)
	})
	return p.rp, p.rpErr
}

func newPuller(s *store.Store, o *options, repo name.Repository) *puller {
	return &puller{s: s, o: o, repo: repo, offline: o.offline, stats: &counters{record: s.Count, user: o.counters, byHost: len(o.mirrors[repo.RegistryStr()]) > 0}}
}

// resolve finds the manifest (or index) a reference names, from the cache
// when it can and from the registry when it must. A digest reference
// needs no network once cached. A tag asks the registry for its current
// digest, and falls back to index.json when offline or unreachable.
//
// Call release once the ref is recorded in index.json (or the pull gave
// up): for a tag the cache has not seen, it holds the tag's lock, so that
// processes pulling the same new tag at once fetch its manifest once (see
// resolveTag).
func (p *puller) resolve(ctx context.Context, ref name.Reference) (desc v1.Descriptor, raw []byte, release func(), err error) {
	release = func() {}
	var d digest.Digest
	switch r := ref.(type) {
	case name.Digest:
		dd, err := digest.Parse(r.DigestStr())
		if err != nil {
			return v1.Descriptor{}, nil, release, fmt.Errorf("%s: %w", ref, store.ErrInvalidDigest)
		}
		d = dd
	default:
		dd, raw, unlock, err := p.resolveTag(ctx, ref)
		if err != nil {
			return v1.Descriptor{}, nil, release, err
		}
		release = unlock
		if raw != nil {
			return v1.Descriptor{MediaType: sniffMediaType(raw), Digest: toHash(dd), Size: int64(len(raw))}, raw, release, nil
		}
		d = dd
	}
	raw, err = p.manifest(ctx, d)
	if err != nil {
		release()
		return v1.Descriptor{}, nil, func() {}, err
	}
	return v1.Descriptor{MediaType: sniffMediaType(raw), Digest: toHash(d), Size: int64(len(raw))}, raw, release, nil
}

// resolveTag finds the digest a tag names.
//
// A tag the cache has recorded is asked for with a HEAD, which registries
// answer from their index (Docker Hub does not count it against its pull
// limit), and the manifest then comes from the store unless the tag moved.
//
// A tag the cache never recorded is fetched with one GET, which also
// returns the manifest (raw): a HEAD first would add a round trip to every
// cold pull and save nothing. That GET is made under the tag's lock, which
// the caller releases (unlock) once it has recorded the tag: processes
// pulling the same new tag at once wait for the first (at most
// tagWaitMax), then ask with a HEAD and find the manifest stored. So the
// registry sees one GET of the manifest, as it did when every pull started
// with a HEAD. A cache that cannot be written, and so cannot record the
// tag, asks with a HEAD every time.
func (p *puller) resolveTag(ctx context.Context, ref name.Reference) (d digest.Digest, raw []byte, unlock func(), err error) {
	noop := func() {}
	cached, cerr := p.s.Resolve(ctx, ref.Name())
	if p.offline {
		if cerr != nil {
			return "", nil, noop, fmt.Errorf("resolving %s offline: the tag was never warmed into this cache: %w", ref, ErrOffline)
		}
		p.o.warnOnce.warn("offline", "tag resolved offline from the cache's index.json", "ref", ref.Name(), "digest", cached.Digest)
		return cached.Digest, nil, noop, nil
	}
	if d, ok := p.resolveOnMirrors(ctx, ref); ok {
		return d, nil, noop, nil
	}
	rp, err := p.remote(ctx)
	if err != nil {
		return "", nil, noop, err
	}
	if cerr != nil {
		// The holder records the tag as soon as its manifest is in, and
		// then releases the lock. The wait is bounded all the same: past
		// tagWaitMax a HEAD finds the manifest in the store, and a pull
		// holding a blob's lock that the holder needs cannot deadlock
		// with it.
		wctx, cancel := context.WithTimeout(ctx, tagWaitMax)
		unlock, lerr := p.s.LockBlob(wctx, tagLockKey(ref))
		cancel()
		if unlock == nil {
			if ctx.Err() != nil {
				return "", nil, noop, fmt.Errorf("resolving %s: %w", ref, lerr)
			}
			// Waited long enough: ask with a HEAD below.
			unlock, lerr = noop, errTagBusy
		}
		// A cache that cannot be written (lerr: no lock file) cannot
		// record the tag either, so a GET by tag would be repeated, and
		// counted, on every pull: it asks with a HEAD below instead, and
		// its manifest may be in the store already.
		if lerr == nil {
			// Whoever held the lock may have recorded the tag meanwhile.
			if cached, cerr = p.s.Resolve(ctx, ref.Name()); cerr != nil {
				d, raw, err := p.getByTag(ctx, rp, ref)
				switch {
				case err == nil:
					return d, raw, unlock, nil
				case unreachable(ctx, err) && p.o.resolve == ResolveFallback:
					unlock()
					return "", nil, noop, neverWarmed(ref, err)
				default:
					unlock()
					return "", nil, noop, fmt.Errorf("resolving %s: %w", ref, err)
				}
			}
		}
		unlock()
	}
	err = nil
	if p.anonymous {
		// A handshake that failed (err) is not tried again by rp.Head.
		d, ok, herr := p.eagerHead(ctx, rp, ref)
		if ok {
			return d, nil, noop, nil
		}
		err = herr
	}
	if err == nil {
		var desc *v1.Descriptor
		if desc, err = rp.Head(ctx, ref); err == nil {
			d, err := toDigest(desc.Digest)
			return d, nil, noop, err
		}
	}
	if !unreachable(ctx, err) || p.o.resolve == ResolveRemote {
		return "", nil, noop, fmt.Errorf("resolving %s: %w", ref, err)
	}
	if cerr != nil {
		return "", nil, noop, neverWarmed(ref, err)
	}
	p.offline = true
	p.o.warnOnce.warn("offline", "registry unreachable; tag resolved offline from the cache's index.json",
		"ref", ref.Name(), "digest", cached.Digest, "err", err)
	return cached.Digest, nil, noop, nil
}

// resolveOnMirrors asks the mirrors that may resolve tags (Mirror.Resolve)
// for the digest ref names, in order, with a HEAD; the manifest then comes
// from the store, or by digest from the hosts. A mirror that fails is
// passed over, with one warning per kind; ok is false when none answered.
func (p *puller) resolveOnMirrors(ctx context.Context, ref name.Reference) (digest.Digest, bool) {
	for _, h := range p.hosts() {
		if h.mirror == nil || !h.mirror.Resolve {
			continue
		}
		rp, err := p.remoteOf(ctx, h)
		var desc *v1.Descriptor
		if err == nil {
			desc, err = rp.Head(ctx, h.repo.Tag(ref.Identifier()))
		}
		var d digest.Digest
		if err == nil {
			d, err = toDigest(desc.Digest)
		}
		if err == nil {
			return d, true
		}
		p.passedOver(h, failureKind(err), err)
	}
	return "", false
}

// neverWarmed is the error of a tag that the registry could not be asked
// for and the cache never recorded: ErrOffline as documented, with the
// network error beside it.
func neverWarmed(ref name.Reference, err error) error {
	return fmt.Errorf("resolving %s: registry unreachable and the tag was never warmed: %w: %w", ref, ErrOffline, err)
}

// tagWaitMax bounds the wait for a tag that another pull is fetching. A
// variable for tests.
var tagWaitMax = 5 * time.Second

// errTagBusy stands for a tag lock not taken within tagWaitMax.
var errTagBusy = errors.New("tag being fetched by another pull")

// tagLockKey names the lock of a tag's first fetch. The store's locks are
// per digest, so the tag gets a digest of its own, which no blob has.
func tagLockKey(ref name.Reference) digest.Digest {
	return digest.FromString("layercache: GET of the manifest of tag " + ref.Name())
}

// getByTag fetches the manifest or index a tag names, checks it against
// the digest the registry says it sent (see claim in handoff.go), and
// stores it under the digest of its bytes. raw is nil when only the
// digest could be checked: the caller then fetches the manifest by digest.
func (p *puller) getByTag(ctx context.Context, rp *remote.Puller, ref name.Reference) (digest.Digest, []byte, error) {
	if p.anonymous {
		raw, claimed, ok, err := p.eagerGet(ctx, rp, ref)
		if err != nil {
			return "", nil, err
		}
		if ok {
			if err := checkClaimed(ref, raw, claimed, ""); err != nil {
				return "", nil, err
			}
			d := digest.FromBytes(raw)
			p.stats.noteHost(p.repo.RegistryStr(), int64(len(raw)))
			p.keepFetched(ctx, d, raw)
			return d, raw, nil
		}
	}
	cctx, c := withClaim(ctx)
	desc, err := rp.Get(cctx, ref)
	if err != nil {
		return "", nil, err
	}
	raw := desc.Manifest
	if len(raw) > maxManifestSize {
		return "", nil, fmt.Errorf("manifest of %s: %w", ref, errTooLarge)
	}
	claimed, mt, seen := c.get()
	if !seen {
		// A transport of the caller's (WithRemote) replaced the one that
		// notes the header. Ask with a HEAD for the digest the tag names,
		// and fetch by digest if the bytes are not what it names (or the
		// tag moved in between).
		hd, err := rp.Head(ctx, ref)
		if err != nil {
			return "", nil, err
		}
		d, err := toDigest(hd.Digest)
		if err != nil {
			return "", nil, err
		}
		if d.Algorithm().FromBytes(raw) != d {
			return d, nil, nil
		}
		claimed = ""
	}
	if err := checkClaimed(ref, raw, claimed, mt); err != nil {
		return "", nil, err
	}
	d := digest.FromBytes(raw)
	p.stats.noteHost(p.repo.RegistryStr(), int64(len(raw))) // keepFetched counts the miss
	p.keepFetched(ctx, d, raw)
	return d, raw, nil
}

// checkClaimed checks the manifest raw of a tag against the digest the
// registry said it sent (Docker-Content-Digest) with media type mt. A
// registry that sends no header (or a signed schema 1 manifest, whose
// header names the manifest without its signatures) leaves nothing to
// check, as a GET by tag through ggcr does.
func checkClaimed(ref name.Reference, raw []byte, claimed, mt string) error {
	if claimed == "" || mt == string(types.DockerManifestSchema1Signed) {
		return nil
	}
	cd, err := digest.Parse(claimed)
	if err != nil {
		return fmt.Errorf("manifest of %s: registry sent an invalid Docker-Content-Digest %q: %w", ref, claimed, store.ErrInvalidDigest)
	}
	if got := cd.Algorithm().FromBytes(raw); got != cd {
		return fmt.Errorf("manifest of %s: %w: registry said it sent %s, but the %d bytes hash to %s",
			ref, store.ErrDigestMismatch, cd, len(raw), got)
	}
	return nil
}

// errTooLarge is a manifest over maxManifestSize.
var errTooLarge = fmt.Errorf("larger than %d bytes", maxManifestSize)

// unreachable reports whether err means the registry could not be
// reached at all, so that a recorded tag may be resolved from the cache
// (ResolveFallback). It names what counts, and everything else (any
// answer: a 404, a 401, a page that is no manifest, a HEAD without a
// digest; bytes that are not what they should be; a malformed address)
// is an error that names the registry:
//
//   - a connection refused, reset or timed out, or a network that cannot
//     be reached (net.OpError), or a failed DNS lookup (net.DNSError);
//   - a connection closed before the answer was whole (io.EOF,
//     io.ErrUnexpectedEOF);
//   - a timeout: a dial to a host that is down, or behind a VPN that is
//     off, times out with an error matching context.DeadlineExceeded, so
//     only the caller's own ctx being done means the pull was called off;
//   - a 5xx (after ggcr's retries): what an HTTP proxy, mirror or load
//     balancer in front of a registry that is down answers instead of a
//     refused connection;
//   - a 429: a rate limit (Docker Hub's, on CI runners that share an
//     address), which a cache that holds the image should ride out.
//
// An address that cannot be dialled at all (net.AddrError: a port out of
// range) is a mistake in the reference, not an outage.
func unreachable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return false
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return terr.StatusCode == http.StatusTooManyRequests || terr.StatusCode >= 500
	}
	var addrErr *net.AddrError
	if errors.As(err, &addrErr) {
		return false
	}
	var opErr *net.OpError
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.As(err, &opErr), errors.As(err, &dnsErr):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	}
	return false
}

// manifest returns the manifest or index d, from the store or else from
// the hosts of the pull in turn (and then stores it).
func (p *puller) manifest(ctx context.Context, d digest.Digest) ([]byte, error) {
	return p.smallBlob(ctx, d, func() ([]byte, error) {
		return p.fromHosts(ctx, d, func(h *host) ([]byte, error) {
			rp, err := p.remoteOf(ctx, h)
			if err != nil {
				return nil, err
			}
			desc, err := rp.Get(ctx, h.repo.Digest(d.String()))
			if err != nil {
				return nil, err
			}
			return desc.Manifest, nil
		})
	})
}

// config returns the config blob d, from the store or else from the
// hosts of the pull in turn (and then stores it).
func (p *puller) config(ctx context.Context, d digest.Digest) ([]byte, error) {
	return p.smallBlob(ctx, d, func() ([]byte, error) {
		return p.fromHosts(ctx, d, func(h *host) ([]byte, error) {
			rc, _, _, _, err := p.blobFrom(ctx, h, d, -1, 0)
			if err != nil {
				return nil, err
			}
			defer rc.Close()
			return io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
		})
	})
}

// fromHosts fetches the small blob d with get from each host of the pull
// in turn, until one answers with bytes that hash to d: a host that
// cannot serve it (see passOver) or serves wrong bytes is passed over for
// the next. The last host's error is the caller's.
func (p *puller) fromHosts(ctx context.Context, d digest.Digest, get func(*host) ([]byte, error)) ([]byte, error) {
	hosts := p.hosts()
	for i, h := range hosts {
		b, err := get(h)
		last := i+1 == len(hosts)
		if err == nil && len(b) <= maxManifestSize && d.Algorithm().FromBytes(b) != d && !last {
			err = fmt.Errorf("blob %s: %w", d, store.ErrDigestMismatch)
			p.passedOver(h, "wrong bytes", err)
			continue
		}
		if err != nil && !last && (passOver(ctx, err) || errors.Is(err, store.ErrDigestMismatch)) {
			p.passedOver(h, failureKind(err), err)
			continue
		}
		if err == nil {
			p.stats.noteHost(h.name, int64(len(b))) // keepFetched counts the miss
		}
		return b, err
	}
	return nil, fmt.Errorf("blob %s: no host", d)
}

// smallBlob serves a blob that fits in memory (a manifest or a config):
// from the store, verified, or from fetch, checked against d before it is
// stored or returned.
func (p *puller) smallBlob(ctx context.Context, d digest.Digest, fetch func() ([]byte, error)) ([]byte, error) {
	b, err := p.s.Get(ctx, d)
	if err == nil {
		p.stats.hit(int64(len(b)))
		return b, nil
	}
	p.noteStoreReadError(d, err)
	if p.offline {
		return nil, fmt.Errorf("blob %s: %w", d, ErrOffline)
	}
	// Fetch under the digest's lock, as openLayer does, so that processes
	// warming the same image download its config once, not once each;
	// then look again, since the holder we waited for may have stored it.
	unlock, lerr := p.s.LockBlob(ctx, d)
	if unlock == nil {
		return nil, fmt.Errorf("blob %s: %w", d, lerr)
	}
	defer unlock()
	if lerr != nil {
		p.noteStoreWriteError(d, lerr)
	}
	if b, err := p.s.Get(ctx, d); err == nil {
		p.stats.hit(int64(len(b)))
		return b, nil
	}
	b, err = fetch()
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", p.repo.Digest(d.String()), err)
	}
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("blob %s: larger than %d bytes; not a manifest or config", d, maxManifestSize)
	}
	if got := d.Algorithm().FromBytes(b); got != d {
		return nil, fmt.Errorf("fetching %s: %w: registry sent %d bytes hashing to %s", d, store.ErrDigestMismatch, len(b), got)
	}
	p.keepFetched(ctx, d, b)
	return b, nil
}

// keepFetched counts a manifest or config fetched from the registry, whose
// digest d was checked, and stores it if the cache can take it.
func (p *puller) keepFetched(ctx context.Context, d digest.Digest, b []byte) {
	p.stats.miss(int64(len(b)))
	if err := p.s.PutVerified(ctx, d, int64(len(b)), bytes.NewReader(b)); err != nil {
		p.noteStoreWriteError(d, err)
	}
}

// noteStoreReadError logs what a failed store read means for the pull.
func (p *puller) noteStoreReadError(d digest.Digest, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
	case errors.Is(err, store.ErrCorrupted):
		p.o.logger.Warn("cached blob was corrupted; removed it and fetching it again", "digest", d, "err", err)
	case errors.Is(err, store.ErrTooLarge):
		p.o.logger.Warn("cached blob is too large for a manifest or config; fetching it again", "digest", d, "err", err)
	default:
		p.o.warnOnce.warn("read", "cannot read the cache; using the registry", "digest", d, "err", err)
	}
}

// noteStoreWriteError logs, once per kind, that the cache could not keep
// a blob. The pull goes on: the cache is an optimisation, never a reason
// for a build to fail.
func (p *puller) noteStoreWriteError(d digest.Digest, err error) {
	switch {
	case layout.IsReadOnly(err):
		p.o.warnOnce.warn("readonly", "cache is read-only; serving hits from it and misses from the registry without caching them",
			"dir", p.s.Dir(), "err", err)
	case isNoSpace(err):
		p.o.warnOnce.warn("nospace", "cache disk is full; misses are served from the registry without caching them",
			"dir", p.s.Dir(), "err", err)
	default:
		p.o.warnOnce.warn("write", "cannot write to the cache; misses are served from the registry without caching them",
			"digest", d, "dir", p.s.Dir(), "err", err)
	}
}

// openLayer returns the compressed bytes of the blob d through the fetch
// step (fetchstep.go): verified from the store on a hit; on a miss,
// streamed from the registry to the caller and into the store at once,
// committed only when the whole blob arrived and matched d, and resumed
// where a cut broke it. It reports whether the bytes come from the cache.
func (p *puller) openLayer(ctx context.Context, d digest.Digest, size int64) (io.ReadCloser, bool, error) {
	if p.offline {
		if rc, err := p.openCached(ctx, d); err == nil {
			return rc, true, nil
		}
		return nil, false, fmt.Errorf("blob %s: %w", d, ErrOffline)
	}
	return p.step(d, size).open(ctx)
}

// step is the fetch step of blob d from the registry, through its
// mirrors first (see hosts).
func (p *puller) step(d digest.Digest, size int64) *fetchStep {
	hs := p.hostSource(d, size)
	return &fetchStep{
		s: p.s, d: d, size: size, from: p.repo.String(), src: hs.open, nextHost: hs.next,
		hit:         p.stats.hit,
		miss:        func(n int64) { p.stats.missFrom(hs.current().name, n) },
		noteReadErr: p.noteStoreReadError, noteWriteErr: p.noteStoreWriteError,
	}
}

// openCached opens d from the store, verified before the first byte, and
// counts the hit.
func (p *puller) openCached(ctx context.Context, d digest.Digest) (io.ReadCloser, error) {
	rc, info, err := p.s.OpenVerified(ctx, d)
	if err != nil {
		p.noteStoreReadError(d, err)
		return nil, err
	}
	p.stats.hit(info.Size)
	return rc, nil
}

// hostSource opens blob d from the hosts of the pull in turn: its
// mirrors, then the upstream registry (see hosts).
type hostSource struct {
	p    *puller
	d    digest.Digest
	size int64
	i    int // the host asked now
}

func (p *puller) hostSource(d digest.Digest, size int64) *hostSource {
	return &hostSource{p: p, d: d, size: size}
}

func (hs *hostSource) current() *host { return hs.p.hosts()[hs.i] }

// next passes over the host asked now, whose bytes were wrong, for the
// next one; it reports false when there is none.
func (hs *hostSource) next() bool {
	hosts := hs.p.hosts()
	if hs.i+1 >= len(hosts) {
		return false
	}
	hs.p.passedOver(hosts[hs.i], "wrong bytes", fmt.Errorf("blob %s: %w", hs.d, store.ErrDigestMismatch))
	hs.i++
	return true
}

// open is the source of the fetch step: the host asked now, and on a
// failure that says another host may do better (see passOver) the next.
func (hs *hostSource) open(ctx context.Context, offset int64) (io.ReadCloser, int64, int64, bool, error) {
	hosts := hs.p.hosts()
	for {
		h := hosts[hs.i]
		body, start, total, raw, err := hs.p.blobFrom(ctx, h, hs.d, hs.size, offset)
		if err == nil || hs.i+1 >= len(hosts) || !passOver(ctx, err) {
			return body, start, total, raw, err
		}
		hs.p.passedOver(h, failureKind(err), err)
		hs.i++
	}
}

// blobFrom opens blob d from host h through ggcr, with its
// authentication, retries and redirect handling, from offset on (a Range
// request): the body came through the hand-off (see handoff.go) and is
// raw, not verified yet. A caller's own transport (WithRemote) bypasses
// the hand-off: the body is then ggcr's verifying reader, from zero. A raw
// body whose length is not what the descriptor says (size, when known) is
// refused before its first byte, as ggcr refuses one.
func (p *puller) blobFrom(ctx context.Context, h *host, d digest.Digest, size, offset int64) (io.ReadCloser, int64, int64, bool, error) {
	rp, err := p.remoteOf(ctx, h)
	if err != nil {
		return nil, 0, 0, false, err
	}
	where := h.repo.Digest(d.String())
	hctx, ho := withHandoff(ctx, d, offset, size)
	l, err := rp.Layer(hctx, where)
	var rc io.ReadCloser
	if err == nil {
		rc, err = l.Compressed()
	}
	if resp := ho.take(); resp != nil {
		if rc != nil {
			rc.Close()
		}
		start, total, ok := rangeStart(resp, offset)
		if !ok {
			resp.Body.Close()
			p.o.logger.Debug("registry answered a Range request from elsewhere; fetching from zero", "digest", d,
				"offset", offset, "contentRange", resp.Header.Get("Content-Range"))
			return p.blobFrom(ctx, h, d, size, 0)
		}
		if size >= 0 && total >= 0 && total != size {
			resp.Body.Close()
			return nil, 0, 0, false, fmt.Errorf("fetching %s: %w: the registry sends %d bytes, the descriptor says %d",
				where, store.ErrDigestMismatch, total, size)
		}
		p.o.logger.Debug("fetching blob, hashed once by the cache", "digest", d, "host", h.name, "from", start, "size", total)
		return resp.Body, start, total, true, nil
	}
	if err != nil && offset > 0 && ctx.Err() == nil {
		// A registry that refuses the Range: ask for the whole blob.
		p.o.logger.Debug("registry refused a Range request; fetching from zero", "digest", d, "offset", offset, "err", err)
		return p.blobFrom(ctx, h, d, size, 0)
	}
	if err != nil {
		return nil, 0, 0, false, fmt.Errorf("fetching %s: %w", where, err)
	}
	p.o.logger.Debug("fetching blob through ggcr's verifying reader (custom transport)", "digest", d)
	return rc, 0, size, false, nil
}
