package torture_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// plantCase plants something hostile in a warmed cache, then uses it.
type plantCase struct {
	name string
	// plant changes the cache at dir, using outside, a directory outside
	// the cache that nothing may write to.
	plant func(t *testing.T, dir, outside string, img *image)
	// afterOpen plants once a store is open, rather than before.
	afterOpen bool
	// openFails says that opening must refuse the cache.
	openFails bool
}

// TestHostileSymlinks plants symlinks pointing outside the cache in blobs/,
// ingest/ and at the cache root, before a process opens the cache and
// while one has it open, and uses the cache: puts, gets, pulls, prunes,
// clears, tags, stats. Nothing outside the cache may change, and nothing
// read through a symlink may be served.
func TestHostileSymlinks(t *testing.T) {
	w := newWorld(t, []int64{64 << 10, 32 << 10})
	img := w.images[0]
	template := filepath.Join(t.TempDir(), "template")
	warm(t, template, img)
	layer := img.blobs[2]
	// outside holds copies of the image's blobs, under their digests, a
	// valid index.json and old files that a sweep would take.
	fillOutside := func(t *testing.T, outside string) {
		ts, err := store.Open(template)
		check(t, err)
		for _, d := range img.blobs {
			b, err := ts.Get(t.Context(), d)
			check(t, err)
			check(t, os.WriteFile(filepath.Join(outside, d.Encoded()), b, 0o644))
		}
		idx := fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"annotations":{"org.opencontainers.image.ref.name":"evil"}}]}`, img.digest, img.size)
		check(t, os.WriteFile(filepath.Join(outside, "index.json"), []byte(idx), 0o644))
		check(t, os.WriteFile(filepath.Join(outside, "stats.json"), []byte(`{"hits":999}`), 0o644))
		check(t, os.WriteFile(filepath.Join(outside, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644))
		old := time.Now().Add(-48 * time.Hour)
		for _, n := range []string{"old.tmp", "old.lock", "precious"} {
			p := filepath.Join(outside, n)
			check(t, os.WriteFile(p, []byte(n), 0o644))
			check(t, os.Chtimes(p, old, old))
		}
	}
	replace := func(t *testing.T, path, target string) {
		check(t, os.RemoveAll(path))
		check(t, os.Symlink(target, path))
	}
	alg := func(dir string) string { return filepath.Join(dir, layoutfs.BlobsDir, "sha256") }
	cases := []plantCase{
		{name: "blob symlinked to an outside copy of itself", plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(alg(dir), layer.Encoded()), filepath.Join(out, layer.Encoded()))
		}},
		{name: "blob symlinked to an outside file of other bytes", plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(alg(dir), layer.Encoded()), filepath.Join(out, "precious"))
		}},
		{name: "manifest symlinked outside", plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(alg(dir), img.digest.Encoded()), filepath.Join(out, img.digest.Encoded()))
		}},
		{name: "blobs/sha256 symlinked to an outside dir", plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, alg(dir), out)
		}},
		{name: "blobs/sha256 symlinked outside while open", afterOpen: true, plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, alg(dir), out)
		}},
		{name: "blobs symlinked to an outside dir", plant: func(t *testing.T, dir, out string, img *image) {
			check(t, os.MkdirAll(filepath.Join(out, "sha256"), 0o755))
			replace(t, filepath.Join(dir, layoutfs.BlobsDir), out)
		}},
		{name: "blobs symlinked outside while open", afterOpen: true, plant: func(t *testing.T, dir, out string, img *image) {
			check(t, os.MkdirAll(filepath.Join(out, "sha256"), 0o755))
			replace(t, filepath.Join(dir, layoutfs.BlobsDir), out)
		}},
		{name: "ingest symlinked to an outside dir", plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.IngestDir), out)
		}},
		{name: "ingest symlinked outside while open", afterOpen: true, plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.IngestDir), out)
		}},
		{name: "blob lock file symlinked outside", afterOpen: true, plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.IngestDir, "sha256-"+layer.Encoded()+".lock"), filepath.Join(out, "created-by-lock"))
		}},
		{name: "index lock symlinked outside", afterOpen: true, plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.IngestDir, "index.json.lock"), filepath.Join(out, "created-by-index-lock"))
		}},
		{name: "stats lock symlinked outside", afterOpen: true, plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.IngestDir, layoutfs.StatsFile+".lock"), filepath.Join(out, "created-by-stats-lock"))
		}},
		{name: "index.json symlinked to an outside index", plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.IndexFile), filepath.Join(out, "index.json"))
		}},
		{name: "index.json symlinked outside while open", afterOpen: true, plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.IndexFile), filepath.Join(out, "index.json"))
		}},
		{name: "stats file symlinked outside", plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.StatsFile), filepath.Join(out, "stats.json"))
		}},
		{name: "oci-layout symlinked outside", openFails: true, plant: func(t *testing.T, dir, out string, img *image) {
			replace(t, filepath.Join(dir, layoutfs.LayoutFile), filepath.Join(out, "oci-layout"))
		}},
	}

	var violations []string
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			copyDir(t, template, dir)
			outside := t.TempDir()
			fillOutside(t, outside)
			var s *store.Store
			if c.afterOpen {
				var err error
				s, err = store.Open(dir)
				check(t, err)
			}
			c.plant(t, dir, outside, img)
			before := snapshot(t, outside)
			bad := useHostileCache(t, w, s, dir, c)
			if d := diffSnapshots(before, snapshot(t, outside)); d != "" {
				bad = append(bad, "written through to outside the cache: "+d)
			}
			for _, b := range bad {
				t.Errorf("%s", b)
			}
			for _, b := range bad {
				violations = append(violations, c.name+": "+b)
			}
		})
	}
	report.add(t, row{
		scenario: "5a. hostile symlinks",
		ops:      len(cases), faults: fmt.Sprintf("%d planted symlinks", len(cases)),
		violations: len(violations), details: violations,
	})
}

// useHostileCache opens the cache (unless s is already open) and uses it
// every way, returning what went wrong: bytes served that are not the
// blob's, an open that refused a cache it should have healed, a pull that
// failed.
func useHostileCache(t *testing.T, w *world, s *store.Store, dir string, c plantCase) []string {
	var bad []string
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	img := w.images[0]
	if s == nil {
		var err error
		s, err = store.Open(dir)
		switch {
		case c.openFails && err == nil:
			bad = append(bad, "the cache opened")
		case c.openFails:
			if !errors.Is(err, store.ErrNotLayout) {
				bad = append(bad, fmt.Sprintf("open refused with %v, want ErrNotLayout", err))
			}
			return bad
		case err != nil:
			return append(bad, fmt.Sprintf("open: %v", err))
		}
	}
	// Reads serve the blob's bytes or an error, never other bytes.
	for _, d := range img.blobs {
		if b, err := s.Get(ctx, d); err == nil && digest.FromBytes(b) != d {
			bad = append(bad, fmt.Sprintf("get %s served other bytes", d))
		}
		if rc, _, err := s.OpenVerified(ctx, d); err == nil {
			b := readAll(rc)
			rc.Close()
			if digest.FromBytes(b) != d {
				bad = append(bad, fmt.Sprintf("open %s served other bytes", d))
			}
		}
	}
	// Refs come from the cache's own index.json, not an outside one.
	if refs, err := s.Refs(ctx); err == nil {
		for _, r := range refs {
			if r.Annotations[ocispec.AnnotationRefName] == "evil" {
				bad = append(bad, "a ref of an outside index.json was served")
			}
		}
	}
	if st, err := s.Stats(ctx); err == nil && st.Hits >= 999 {
		bad = append(bad, "the stats of an outside file were served")
	}
	// Writes, locks and removals, each of which may be refused but must
	// not act outside.
	_, _ = s.Put(ctx, strings.NewReader("hostile put "+c.name))
	if unlock, _ := s.LockBlob(ctx, img.blobs[2]); unlock != nil {
		unlock()
	}
	_ = s.Tag(ctx, "torture/hostile:1", descOf(img))
	_ = s.AddStats(ctx, store.Stats{Hits: 1})
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if _, _, err := pullImageT(ctx, t, s, img, remotecache.WithLogger(log)); err != nil {
		bad = append(bad, fmt.Sprintf("a pull through the hostile cache failed: %v", err))
	}
	_, _ = s.Prune(ctx, store.Policy{MaxSize: 1})
	_ = s.Walk(ctx, func(store.Info) error { return nil })
	_ = s.Clear(ctx)
	// A fresh process heals what can be healed and uses the cache.
	s2, err := store.Open(dir)
	if err != nil {
		return append(bad, fmt.Sprintf("open after use: %v", err))
	}
	if _, _, err := pullImageT(ctx, t, s2, img); err != nil {
		bad = append(bad, fmt.Sprintf("a pull after reopening failed: %v", err))
	}
	for _, d := range img.blobs {
		if _, err := s2.Stat(ctx, d, store.VerifyFirst); err != nil {
			bad = append(bad, fmt.Sprintf("after a pull in a reopened cache: %v", err))
		}
	}
	return bad
}

// descOf returns the descriptor of img's manifest.
func descOf(img *image) ocispecDescriptor {
	return ocispecDescriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: img.digest, Size: img.size}
}

// pullImageT pulls img through s and checks every byte, returning the
// first error.
func pullImageT(ctx context.Context, t *testing.T, s *store.Store, img *image, extra ...remotecache.Option) (int, int64, error) {
	ri, err := remotecache.Image(img.ref, s, cacheOptions(t, append([]remotecache.Option{remotecache.WithContext(ctx)}, extra...)...)...)
	if err != nil {
		return 0, 0, err
	}
	raw, err := ri.RawManifest()
	if err != nil {
		return 0, 0, err
	}
	if digest.FromBytes(raw) != img.digest {
		return 0, 0, fmt.Errorf("manifest hashes to %s, want %s", digest.FromBytes(raw), img.digest)
	}
	if _, err := ri.RawConfigFile(); err != nil {
		return 0, 0, err
	}
	layers, err := ri.Layers()
	if err != nil {
		return 0, 0, err
	}
	var n int64
	for i, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return i, n, err
		}
		b := readAll(rc)
		err = rc.Close()
		if d := digest.FromBytes(b); d != img.blobs[2+i] {
			return i, n, fmt.Errorf("layer %d hashes to %s", i, d)
		}
		n += int64(len(b))
		if err != nil {
			return i, n, err
		}
	}
	return len(layers), n, nil
}

// TestHostileIndex replaces index.json of a warmed cache with garbage, a
// truncated index, a huge one, and things that are not files: a fresh
// open reports it, keeps it as index.json.corrupt, and rebuilds index.json
// from the blobs, so the image resolves by digest with no network; and
// nothing panics or hangs.
func TestHostileIndex(t *testing.T) {
	w := newWorld(t, []int64{64 << 10})
	img := w.images[0]
	template := filepath.Join(t.TempDir(), "template")
	warm(t, template, img)
	good, err := os.ReadFile(filepath.Join(template, layoutfs.IndexFile))
	check(t, err)
	huge := append(append([]byte(nil), good[:len(good)-2]...), bytes.Repeat([]byte(" "), 17<<20)...)
	cases := []struct {
		name  string
		plant func(path string) error
	}{
		{"garbage", func(p string) error { return os.WriteFile(p, []byte("\x00\xffnot json at all"), 0o644) }},
		{"truncated", func(p string) error { return os.WriteFile(p, good[:len(good)/2], 0o644) }},
		{"empty", func(p string) error { return os.WriteFile(p, nil, 0o644) }},
		{"huge", func(p string) error { return os.WriteFile(p, huge, 0o644) }},
		{"null", func(p string) error { return os.WriteFile(p, []byte("null"), 0o644) }},
		{"wrong types", func(p string) error {
			return os.WriteFile(p, []byte(`{"schemaVersion":2,"manifests":{"digest":7}}`), 0o644)
		}},
		{"path-traversal digest", func(p string) error {
			return os.WriteFile(p, []byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:../../../etc/passwd","size":1}]}`), 0o644)
		}},
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }},
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o644) }},
	}
	var violations []string
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			copyDir(t, template, dir)
			path := filepath.Join(dir, layoutfs.IndexFile)
			check(t, os.Remove(path))
			check(t, c.plant(path))
			bad := hostileIndex(t, dir, img)
			for _, b := range bad {
				t.Error(b)
				violations = append(violations, c.name+": "+b)
			}
		})
	}
	report.add(t, row{
		scenario: "5b. hostile index.json",
		ops:      len(cases), faults: fmt.Sprintf("%d bad index.json files", len(cases)),
		violations: len(violations), details: violations,
	})
}

func hostileIndex(t *testing.T, dir string, img *image) []string {
	var bad []string
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	done := make(chan struct{})
	var s *store.Store
	var err error
	go func() {
		defer close(done)
		s, err = store.Open(dir, store.WithLogger(log))
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return []string{"store.Open hangs"}
	}
	if err != nil {
		return []string{fmt.Sprintf("open: %v", err)}
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "index.json") {
		bad = append(bad, fmt.Sprintf("open did not report the bad index.json; log: %q", logs.String()))
	}
	idx, err := layoutfs.Path(s.Dir()).ReadIndex()
	if err != nil {
		return append(bad, fmt.Sprintf("index.json after open: %v", err))
	}
	var found bool
	for _, m := range idx.Manifests {
		found = found || m.Digest == img.digest
	}
	if !found {
		b, _ := json.Marshal(idx)
		bad = append(bad, fmt.Sprintf("the rebuilt index.json does not list the stored image %s: %s", img.digest, b))
	}
	if _, err := os.Lstat(filepath.Join(dir, layoutfs.CorruptIndexFile)); err != nil {
		bad = append(bad, fmt.Sprintf("the bad index.json was not kept: %v", err))
	}
	// The image resolves by digest, offline, from what the blobs hold.
	ref, err := name.ParseReference(img.ref.Context().Name()+"@"+img.digest.String(), name.Insecure)
	check(t, err)
	ri, err := remotecache.Image(ref, s, remotecache.WithOffline(), remotecache.WithContext(t.Context()))
	if err == nil {
		_, err = ri.RawConfigFile()
	}
	if err != nil {
		bad = append(bad, fmt.Sprintf("offline pull by digest after the rebuild: %v", err))
	}
	// And the next ref update works.
	if err := s.Tag(t.Context(), "torture/after:1", descOf(img)); err != nil {
		bad = append(bad, fmt.Sprintf("tag after the rebuild: %v", err))
	}
	return bad
}
