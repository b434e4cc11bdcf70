package remotecache_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// readBlob reads the whole of remotecache.Blob and checks the size it
// announced.
func readBlob(t *testing.T, fx *fixture, s *store.Store, h v1.Hash, opts ...remotecache.Option) []byte {
	t.Helper()
	rc, size, err := remotecache.Blob(t.Context(), fx.ref.Context(), h, s, append([]remotecache.Option{fast}, opts...)...)
	if err != nil {
		t.Fatalf("Blob(%s): %v", h, err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("reading blob %s: %v", h, err)
	}
	if size != int64(len(b)) {
		t.Errorf("Blob(%s) said size %d, read %d bytes", h, size, len(b))
	}
	return b
}

func TestBlob_MissStoredThenHit(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 41, 2, 4096))
	s, _ := openStore(t)
	h := fx.layers[0]

	if got := readBlob(t, fx, s, h); !bytes.Equal(got, fx.comp[h]) {
		t.Fatalf("miss: got %d bytes that differ from the registry's", len(got))
	}
	assertStored(t, s, h)
	if n := reg.gets(h); n != 1 {
		t.Errorf("miss: %d blob GETs, want 1", n)
	}

	reg.reset()
	if got := readBlob(t, fx, s, h); !bytes.Equal(got, fx.comp[h]) {
		t.Fatalf("hit: got %d bytes that differ from the registry's", len(got))
	}
	if n := reg.gets(h); n != 0 {
		t.Errorf("hit: %d blob GETs, want 0", n)
	}
	st, err := s.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Hits != 1 || st.Misses != 1 {
		t.Errorf("stats: %d hits, %d misses; want 1 and 1", st.Hits, st.Misses)
	}
	assertClean(t, s)
}

func TestBlob_CorruptedHealed(t *testing.T) {
	for _, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			reg := newTestRegistry(t)
			fx := reg.pushImage(t, "test/img:v1", randomImage(t, 42, 1, 4096))
			s, dir := openStore(t)
			h := fx.layers[0]
			readBlob(t, fx, s, h)
			c.apply(t, blobFile(dir, h))
			reg.reset()

			if got := readBlob(t, fx, s, h); !bytes.Equal(got, fx.comp[h]) {
				t.Fatalf("got %d bytes that differ from the registry's", len(got))
			}
			if n := reg.gets(h); n != 1 {
				t.Errorf("%d blob GETs, want 1 (the corrupted blob fetched again)", n)
			}
			assertStored(t, s, h)
		})
	}
}

func TestBlob_WrongBytesNotStored(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 43, 1, 4096))
	s, _ := openStore(t)
	h := fx.layers[0]
	reg.setFault(h, flipByte())

	rc, _, err := remotecache.Blob(t.Context(), fx.ref.Context(), h, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	rc.Close()
	if !errors.Is(err, store.ErrDigestMismatch) {
		t.Errorf("reading a blob the registry mangled: %v, want ErrDigestMismatch", err)
	}
	assertNotStored(t, s, h)
}

func TestBlob_BadDigest(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 44, 1, 1024))
	s, _ := openStore(t)
	tests := []struct {
		name string
		h    v1.Hash
	}{
		// A path trick in the hex.
		{"dot dot", v1.Hash{Algorithm: "sha256", Hex: "../../etc/passwd"}},
		// An algorithm the store does not keep.
		{"md5", v1.Hash{Algorithm: "md5", Hex: "d41d8cd98f00b204e9800998ecf8427e"}},
		// Too short for sha256.
		{"short", v1.Hash{Algorithm: "sha256", Hex: "abc"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := remotecache.Blob(t.Context(), fx.ref.Context(), tc.h, s, fast)
			if !errors.Is(err, store.ErrInvalidDigest) {
				t.Errorf("Blob(%s) = %v, want ErrInvalidDigest", tc.h, err)
			}
		})
	}
	if n := reg.requestCount(); n != 0 {
		t.Errorf("%d requests to the registry, want 0", n)
	}
}

func TestBlob_OfflineMiss(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 45, 1, 1024))
	s, _ := openStore(t)
	_, _, err := remotecache.Blob(t.Context(), fx.ref.Context(), fx.layers[0], s, remotecache.WithOffline())
	if !errors.Is(err, remotecache.ErrOffline) {
		t.Errorf("Blob offline of a blob not cached = %v, want ErrOffline", err)
	}
	if n := reg.requestCount(); n != 0 {
		t.Errorf("%d requests to the registry, want 0", n)
	}
}

func TestManifest_TagRecordedAndResolvedOffline(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 46, 2, 1024))
	s, _ := openStore(t)
	want := must(fx.img.RawManifest())

	desc, raw, err := remotecache.Manifest(t.Context(), fx.ref, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, want) || desc.Digest != fx.digest || desc.Size != int64(len(want)) {
		t.Fatalf("Manifest(%s) = %v, %d bytes; want %s, %d bytes", fx.ref, desc.Digest, len(raw), fx.digest, len(want))
	}
	if desc.MediaType != must(fx.img.MediaType()) {
		t.Errorf("media type %s, want %s", desc.MediaType, must(fx.img.MediaType()))
	}
	if got, err := s.Resolve(t.Context(), fx.ref.Name()); err != nil || got.Digest.String() != fx.digest.String() {
		t.Errorf("index.json: %s resolves to %v (%v), want %s", fx.ref.Name(), got.Digest, err, fx.digest)
	}

	// WithOffline asks nothing; the fallback policy, with the registry
	// down (closed after the first round), uses index.json.
	reg.reset()
	for _, opt := range []remotecache.Option{remotecache.WithOffline(), remotecache.WithResolve(remotecache.ResolveFallback)} {
		desc, raw, err := remotecache.Manifest(t.Context(), fx.ref, s, fast, opt)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, want) || desc.Digest != fx.digest {
			t.Errorf("offline: Manifest(%s) = %v, want %s", fx.ref, desc.Digest, fx.digest)
		}
		if n := reg.requestCount(); n != 0 {
			t.Errorf("offline: %d requests to the registry, want 0", n)
		}
		reg.srv.Close() // the fallback round finds the registry down
	}

	// By digest, from the store.
	byDigest := fx.ref.Context().Digest(fx.digest.String())
	if _, raw, err := remotecache.Manifest(t.Context(), byDigest, s, fast); err != nil || !bytes.Equal(raw, want) {
		t.Errorf("Manifest(%s) = %d bytes, %v; want the manifest from the store", byDigest, len(raw), err)
	}
}

func TestManifest_StatusErrors(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 47, 1, 1024))
	s, _ := openStore(t)
	// A tag the registry does not know is its 404, not ErrOffline.
	_, _, err := remotecache.Manifest(t.Context(), fx.ref.Context().Tag("nope"), s, fast)
	if err == nil || errors.Is(err, remotecache.ErrOffline) {
		t.Errorf("Manifest of an unknown tag = %v, want the registry's 404", err)
	}
	if rs, _ := s.Refs(t.Context()); len(rs) != 0 {
		t.Errorf("index.json holds %v after a failed resolve, want nothing", rs)
	}
	// A bad digest is refused before any request.
	reg.reset()
	_, _, err = remotecache.Manifest(t.Context(), fx.ref.Context().Digest("sha256:"+string(bytes.Repeat([]byte("0"), 64))), s, fast, remotecache.WithOffline())
	if !errors.Is(err, remotecache.ErrOffline) {
		t.Errorf("Manifest of a digest not cached, offline = %v, want ErrOffline", err)
	}
	if n := reg.requestCount(); n != 0 {
		t.Errorf("%d requests, want 0", n)
	}
}

// Blob asks the mirrors first, and Manifest by digest too.
func TestBlob_MirrorFirst(t *testing.T) {
	m := newMirrored(t, 48)
	s, _ := openStore(t)
	opts := m.opts(remotecache.Mirror{URL: "http://" + m.mirror.host})
	h := m.fx.layers[0]
	rc, _, err := remotecache.Blob(t.Context(), m.fx.ref.Context(), h, s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, m.fx.comp[h]) {
		t.Fatalf("Blob through a mirror: %d bytes, %v", len(got), err)
	}
	byDigest := m.fx.ref.Context().Digest(m.fx.digest.String())
	if _, _, err := remotecache.Manifest(t.Context(), byDigest, s, opts...); err != nil {
		t.Fatal(err)
	}
	if n := m.blobGets(m.up); n != 0 || m.up.manifestDigestGets() != 0 {
		t.Errorf("%d blob GETs and %d manifest GETs at the upstream, want none", n, m.up.manifestDigestGets())
	}
	if n := m.mirror.gets(h); n != 1 {
		t.Errorf("%d GETs of the blob at the mirror, want 1", n)
	}
	assertStored(t, s, h)
}
