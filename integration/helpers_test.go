package integration_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// fastBackoff makes ggcr retry 10 ms apart instead of 1 s and 3 s, so that
// faults which survive its three tries fail fast.
var fastBackoff = remote.Backoff{Duration: 10 * time.Millisecond, Factor: 1, Steps: 3}

// cacheOptions are the remotecache options of a pull through the proxy:
// anonymousOptions (the test's context, a transport of the test's own) and
// short retries, which as a WithRemote option make ggcr's handshake come
// first. extra come last, so they win.
func cacheOptions(t *testing.T, extra ...remotecache.Option) []remotecache.Option {
	return anonymousOptions(t, append([]remotecache.Option{remotecache.WithRemote(remote.WithRetryBackoff(fastBackoff))}, extra...)...)
}

// anonymousOptions are cacheOptions without WithRemote: the pull is then
// anonymous, as the CLI's is without credentials, and asks for a tag's
// manifest beside ggcr's handshake (remotecache/eager.go).
func anonymousOptions(t *testing.T, extra ...remotecache.Option) []remotecache.Option {
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return append([]remotecache.Option{
		remotecache.WithContext(t.Context()),
		remotecache.WithTransport(tr),
		remotecache.WithUserAgent("layercache-integration"),
	}, extra...)
}

// openStore opens a store in a new temporary directory.
func openStore(t *testing.T, opts ...store.Option) *store.Store {
	t.Helper()
	s, err := store.Open(t.TempDir(), opts...)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	return s
}

// fixture is an image pushed straight to the registry, and what a pull of
// it must return.
type fixture struct {
	img  v1.Image
	tag  name.Reference // through the proxy
	dig  name.Reference // the same image by digest, through the proxy
	want pulled
	// blobBytes is the size of the config plus all layers: what a cold
	// pull downloads as blobs.
	blobBytes int64
}

// pushImage pushes a random image with layers of the given sizes to the
// registry at repoTag ("repo:tag"), bypassing the proxy so that its counts
// stay at zero, and returns it with references through the proxy.
func pushImage(t *testing.T, reg *regtest.Registry, p *regtest.Proxy, repoTag string, sizes ...int64) *fixture {
	t.Helper()
	img := regtest.PushImage(t, reg.Addr+"/"+repoTag, sizes...)
	f := &fixture{img: img, want: expected(t, img)}
	f.tag = parseRef(t, p.Addr+"/"+repoTag)
	f.dig = parseRef(t, f.tag.Context().Name()+"@"+must(img.Digest()).String())
	f.blobBytes = int64(len(f.want.config))
	for _, l := range f.want.layers {
		f.blobBytes += l.size
	}
	return f
}

// blobs returns the digests of the image's manifest, config and layers.
func (f *fixture) blobs(t *testing.T) []digest.Digest {
	t.Helper()
	ds := []digest.Digest{toDigest(must(f.img.Digest())), toDigest(must(f.img.ConfigName()))}
	for _, l := range f.want.layers {
		ds = append(ds, toDigest(l.digest))
	}
	return ds
}

func parseRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatalf("reference %q: %v", s, err)
	}
	return r
}

// must returns v, and panics if err is set. It is for calls that cannot
// fail, such as the accessors of an in-memory image.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func toDigest(h v1.Hash) digest.Digest { return digest.Digest(h.String()) }

// pulled is what reading an image in full returned: its raw manifest and
// config, and per layer the digest and size of what Compressed and
// Uncompressed streamed. Two pulls returned identical bytes exactly when
// their pulled values are equal.
type pulled struct {
	digest   v1.Hash
	manifest []byte
	config   []byte
	layers   []layerRead
}

type layerRead struct {
	digest, diffID v1.Hash // of the bytes read
	size, usize    int64
}

// expected is what a pull of img must return, from the image itself: the
// layer digests and diff IDs its manifest and config name.
func expected(t *testing.T, img v1.Image) pulled {
	t.Helper()
	m := must(img.Manifest())
	cf := must(img.ConfigFile())
	want := pulled{
		digest:   must(img.Digest()),
		manifest: must(img.RawManifest()),
		config:   must(img.RawConfigFile()),
	}
	for i, l := range m.Layers {
		ul := must(img.LayerByDigest(l.Digest))
		rc := must(ul.Uncompressed())
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		want.layers = append(want.layers, layerRead{digest: l.Digest, diffID: cf.RootFS.DiffIDs[i], size: l.Size, usize: n})
	}
	return want
}

// readImage reads img in full the way a builder does: manifest, config,
// and every layer's Compressed and Uncompressed streams to the end. It
// fails t on any error.
func readImage(t *testing.T, img v1.Image) pulled {
	t.Helper()
	got, err := tryReadImage(img)
	if err != nil {
		t.Fatalf("reading image: %v", err)
	}
	return got
}

func tryReadImage(img v1.Image) (pulled, error) {
	var got pulled
	var err error
	if got.digest, err = img.Digest(); err != nil {
		return got, err
	}
	if got.manifest, err = img.RawManifest(); err != nil {
		return got, err
	}
	if got.config, err = img.RawConfigFile(); err != nil {
		return got, err
	}
	layers, err := img.Layers()
	if err != nil {
		return got, err
	}
	for _, l := range layers {
		var lr layerRead
		if lr.digest, lr.size, err = hashStream(l.Compressed); err != nil {
			return got, err
		}
		if lr.diffID, lr.usize, err = hashStream(l.Uncompressed); err != nil {
			return got, err
		}
		got.layers = append(got.layers, lr)
	}
	return got, nil
}

// hashStream reads the stream open returns to its end and returns the
// sha256 and length of what it read.
func hashStream(open func() (io.ReadCloser, error)) (v1.Hash, int64, error) {
	rc, err := open()
	if err != nil {
		return v1.Hash{}, 0, err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return v1.Hash{}, n, err
	}
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}, n, nil
}

// diff describes how got differs from want, or returns "".
func (want pulled) diff(got pulled) string {
	var d []string
	if got.digest != want.digest {
		d = append(d, fmt.Sprintf("digest %s, want %s", got.digest, want.digest))
	}
	if !bytes.Equal(got.manifest, want.manifest) {
		d = append(d, fmt.Sprintf("manifest of %d bytes differs from the pushed one (%d bytes)", len(got.manifest), len(want.manifest)))
	}
	if !bytes.Equal(got.config, want.config) {
		d = append(d, fmt.Sprintf("config of %d bytes differs from the pushed one (%d bytes)", len(got.config), len(want.config)))
	}
	if len(got.layers) != len(want.layers) {
		d = append(d, fmt.Sprintf("%d layers, want %d", len(got.layers), len(want.layers)))
	} else {
		for i := range got.layers {
			if got.layers[i] != want.layers[i] {
				d = append(d, fmt.Sprintf("layer %d: read %+v, want %+v", i, got.layers[i], want.layers[i]))
			}
		}
	}
	return strings.Join(d, "; ")
}

// assertPulled fails t if got is not want.
func assertPulled(t *testing.T, what string, got, want pulled) {
	t.Helper()
	if d := want.diff(got); d != "" {
		t.Errorf("%s: %s", what, d)
	}
}

// assertStats fails t if the proxy's counts differ from want in any field
// that want sets to a value other than -1. Requests, BlobHeads and
// ManifestHeads are not compared: ggcr's pings and existence checks are
// its own business.
func assertStats(t *testing.T, what string, got regtest.Stats, want regtest.Stats) {
	t.Helper()
	type field struct {
		name      string
		got, want int64
	}
	for _, f := range []field{
		{"BlobGets", got.BlobGets, want.BlobGets},
		{"BlobBytes", got.BlobBytes, want.BlobBytes},
		{"ManifestGets", got.ManifestGets, want.ManifestGets},
		{"BlobUploads", got.BlobUploads, want.BlobUploads},
		{"Mounts", got.Mounts, want.Mounts},
	} {
		if f.want >= 0 && f.got != f.want {
			t.Errorf("%s: proxy saw %s %d, want %d (all counts: %+v)", what, f.name, f.got, f.want, got)
		}
	}
}

// assertStoreSound checks the invariants of a store at rest: every entry
// under blobs/ is a regular file that hashes to its name (store.Stat with
// VerifyFirst on everything Walk finds), and ingest/ holds no temporary
// file, only the empty lock files of the per-digest and index locks.
func assertStoreSound(t *testing.T, s *store.Store) {
	t.Helper()
	ctx := t.Context()
	n := 0
	err := s.Walk(ctx, func(info store.Info) error {
		n++
		if _, err := s.Stat(ctx, info.Digest, store.VerifyFirst); err != nil {
			t.Errorf("store holds a blob that does not verify: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	if n == 0 {
		t.Errorf("store %s holds no blob", s.Dir())
	}
	assertIngestClean(t, s)
}

// assertIngestClean fails if ingest/ holds anything but empty lock files
// and partial downloads: a temp file there is a write that was neither
// committed nor abandoned. A partial download (<alg>-<hex>.partial) is
// kept on purpose when a download was cut or called off, for the next one
// to resume; it must be a regular file of a blob the store does not hold
// (a stored blob's partial was renamed into place). So is its hash state
// (<alg>-<hex>.hashstate), saved beside it for that resume, and removed
// with it.
func assertIngestClean(t *testing.T, s *store.Store) {
	t.Helper()
	dir := layout.Path(s.Dir()).Join(layout.IngestDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		rest, ok := strings.CutSuffix(e.Name(), ".partial")
		if !ok {
			rest, ok = strings.CutSuffix(e.Name(), ".hashstate")
		}
		if ok && fi.Mode().IsRegular() {
			alg, enc, _ := strings.Cut(rest, "-")
			d := digest.NewDigestFromEncoded(digest.Algorithm(alg), enc)
			if _, err := s.Stat(t.Context(), d); err == nil {
				t.Errorf("ingest/ holds %s, the partial download of a blob the store holds", e.Name())
			}
			continue
		}
		if !strings.HasSuffix(e.Name(), ".lock") || !fi.Mode().IsRegular() || fi.Size() != 0 {
			t.Errorf("ingest/ holds %s (%v, %d bytes); want only empty lock files", e.Name(), fi.Mode(), fi.Size())
		}
	}
}

// assertHolds fails unless the store holds each of ds, verified.
func assertHolds(t *testing.T, s *store.Store, ds ...digest.Digest) {
	t.Helper()
	for _, d := range ds {
		if _, err := s.Stat(t.Context(), d, store.VerifyFirst); err != nil {
			t.Errorf("store: %v", err)
		}
	}
}

// assertLacks fails if anything at all is at the final name of one of ds.
func assertLacks(t *testing.T, s *store.Store, ds ...digest.Digest) {
	t.Helper()
	for _, d := range ds {
		path, err := layout.Path(s.Dir()).BlobPath(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Lstat(path); err == nil {
			t.Errorf("store: %s is at the final name of %s, want nothing", fi.Mode(), d)
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

// logBuffer collects slog output; it is safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newLogger returns a logger that records everything from debug up, and
// what it recorded. The log is printed if t fails.
func newLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("slog output:\n%s", b)
		}
	})
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}
