package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
)

// pruneFixture is a store holding four blobs of 100 bytes, last used 4 h,
// 3 h, 2 h and 1 h before the store's clock (t0), oldest first.
type pruneFixture struct {
	s     *Store
	clock *clock
	blobs []digest.Digest // oldest first
}

func newPruneFixture(t *testing.T) *pruneFixture {
	t.Helper()
	s, c := newTestStore(t)
	f := &pruneFixture{s: s, clock: c}
	for i, age := range []time.Duration{4 * time.Hour, 3 * time.Hour, 2 * time.Hour, time.Hour} {
		d := put(t, s, bytes.Repeat([]byte{byte('a' + i)}, 100))
		setLastUse(t, s, d, t0.Add(-age))
		f.blobs = append(f.blobs, d)
	}
	return f
}

// setLastUse sets the mtime of the blob d, which is its last use.
func setLastUse(t *testing.T, s *Store, d digest.Digest, when time.Time) {
	t.Helper()
	path, err := s.path.BlobPath(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}

func stored(t *testing.T, s *Store) []digest.Digest {
	t.Helper()
	var ds []digest.Digest
	if err := s.Walk(context.Background(), func(i Info) error { ds = append(ds, i.Digest); return nil }); err != nil {
		t.Fatal(err)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds
}

func sorted(ds []digest.Digest) []digest.Digest {
	ds = slices.Clone(ds)
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds
}

func digestsOf(infos []Info) []digest.Digest {
	var ds []digest.Digest
	for _, i := range infos {
		ds = append(ds, i.Digest)
	}
	return ds
}

func TestPrune(t *testing.T) {
	tests := []struct {
		policy Policy
		// evicted are indexes into the fixture's blobs, oldest first.
		evicted []int
		reason  string
	}{
		{Policy{}, nil, "zero policy evicts nothing"},
		{Policy{MaxAge: 150 * time.Minute}, []int{0, 1}, "max age evicts the blobs unused for longer"},
		{Policy{MaxAge: 4 * time.Hour}, nil, "max age: a blob used exactly max age ago is kept"},
		{Policy{MaxAge: time.Minute}, []int{0, 1, 2, 3}, "max age shorter than every last use"},
		{Policy{MaxSize: 250}, []int{0, 1}, "max size evicts least recently used first until the rest fit"},
		{Policy{MaxSize: 300}, []int{0}, "max size: exactly fitting is enough"},
		{Policy{MaxSize: 400}, nil, "max size: the store already fits"},
		{Policy{MaxSize: 1}, []int{0, 1, 2, 3}, "max size smaller than any blob"},
		{Policy{MaxAge: 210 * time.Minute, MaxSize: 150}, []int{0, 1, 2}, "both: age first, then size"},
		{Policy{MaxAge: 90 * time.Minute, MaxSize: 350}, []int{0, 1, 2}, "both: age evicts more than size would"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			f := newPruneFixture(t)
			rep, err := f.s.Prune(context.Background(), tc.policy)
			if err != nil {
				t.Fatalf("Prune: %v", err)
			}
			var want []digest.Digest
			for _, i := range tc.evicted {
				want = append(want, f.blobs[i])
			}
			if got := digestsOf(rep.Removed); !slices.Equal(got, want) {
				t.Errorf("Removed: got %v, want %v (least recently used first)", got, want)
			}
			if got, want := rep.FreedBytes, int64(100*len(tc.evicted)); got != want {
				t.Errorf("FreedBytes: got %d, want %d", got, want)
			}
			if got, want := rep.Kept, 4-len(tc.evicted); got != want {
				t.Errorf("Kept: got %d, want %d", got, want)
			}
			if got, want := rep.KeptBytes, int64(100*(4-len(tc.evicted))); got != want {
				t.Errorf("KeptBytes: got %d, want %d", got, want)
			}
			var kept []digest.Digest
			for i, d := range f.blobs {
				if !slices.Contains(tc.evicted, i) {
					kept = append(kept, d)
				}
			}
			if got, want := stored(t, f.s), sorted(kept); !slices.Equal(got, want) {
				t.Errorf("stored after Prune: got %v, want %v", got, want)
			}
			for _, i := range rep.Removed {
				if !i.LastUsed.Before(t0) || i.Size != 100 {
					t.Errorf("Removed %s: got size %d last used %v, want 100 and its mtime", i.Digest, i.Size, i.LastUsed)
				}
			}
		})
	}
}

func TestPrune_OrdersByLastUse(t *testing.T) {
	// Reading a blob makes it the most recently used: it is evicted last.
	f := newPruneFixture(t)
	if _, err := f.s.Get(context.Background(), f.blobs[0]); err != nil {
		t.Fatal(err)
	}
	rep, err := f.s.Prune(context.Background(), Policy{MaxSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := digestsOf(rep.Removed), f.blobs[1:]; !slices.Equal(got, want) {
		t.Errorf("Removed: got %v, want %v", got, want)
	}
	if got, want := stored(t, f.s), f.blobs[:1]; !slices.Equal(got, want) {
		t.Errorf("stored: got %v, want %v", got, want)
	}
}

func TestPrune_DryRun(t *testing.T) {
	f := newPruneFixture(t)
	if err := f.s.Tag(context.Background(), "example.com/old:1", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: f.blobs[0], Size: 100}); err != nil {
		t.Fatal(err)
	}
	oldTemp := f.s.path.Join(layoutfs.IngestDir, "blob-old.tmp")
	if err := os.WriteFile(oldTemp, []byte("litter"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(oldTemp, t0.Add(-2*time.Hour), t0.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	before := testutil.Snapshot(t, f.s.Dir())
	rep, err := f.s.Prune(context.Background(), Policy{MaxSize: 250, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := digestsOf(rep.Removed), f.blobs[:2]; !slices.Equal(got, want) {
		t.Errorf("Removed (dry run): got %v, want %v", got, want)
	}
	if rep.FreedBytes != 200 || rep.Kept != 2 || rep.KeptBytes != 200 {
		t.Errorf("report: got %+v, want 200 bytes freed, 2 blobs and 200 bytes kept", rep)
	}
	if got, want := rep.DroppedRefs, []string{"example.com/old:1"}; !slices.Equal(got, want) {
		t.Errorf("DroppedRefs (dry run): got %q, want %q", got, want)
	}
	if rep.Swept != 0 {
		t.Errorf("Swept (dry run): got %d, want 0", rep.Swept)
	}
	if d := before.Diff(testutil.Snapshot(t, f.s.Dir())); d != "" {
		t.Errorf("a dry run changed the store:\n%s", d)
	}
}

func TestPrune_DropsDanglingRefs(t *testing.T) {
	f := newPruneFixture(t)
	ctx := context.Background()
	tag := func(name string, d digest.Digest) {
		t.Helper()
		if err := f.s.Tag(ctx, name, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 100}); err != nil {
			t.Fatal(err)
		}
	}
	tag("example.com/evicted:1", f.blobs[0])
	tag("example.com/kept:1", f.blobs[3])
	tag("example.com/never-stored:1", digest.FromString("never stored"))
	rep, err := f.s.Prune(ctx, Policy{MaxAge: 150 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"example.com/evicted:1", "example.com/never-stored:1"}
	if got := slices.Sorted(slices.Values(rep.DroppedRefs)); !slices.Equal(got, want) {
		t.Errorf("DroppedRefs: got %q, want %q", got, want)
	}
	refs, err := f.s.Refs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 1 || refs[0].Annotations[refAnnotation] != "example.com/kept:1" {
		t.Errorf("Refs after Prune: got %v, want only example.com/kept:1", refs)
	}
}

func TestPrune_ZeroPolicyDropsDanglingRefsAndSweeps(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	if err := s.Tag(ctx, "gone", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("gone"), Size: 4}); err != nil {
		t.Fatal(err)
	}
	old := s.path.Join(layoutfs.IngestDir, "blob-old.tmp")
	young := s.path.Join(layoutfs.IngestDir, "blob-young.tmp")
	for _, p := range []string{old, young} {
		if err := os.WriteFile(p, []byte("litter"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(old, t0.Add(-61*time.Minute), t0.Add(-61*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(young, t0.Add(-59*time.Minute), t0.Add(-59*time.Minute)); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Prune(ctx, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.DroppedRefs, []string{"gone"}) || rep.Swept != 1 {
		t.Errorf("report: got %+v, want DroppedRefs [gone] and Swept 1", rep)
	}
	if _, err := os.Stat(old); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Prune kept a temp file older than an hour (%v)", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("Prune removed a temp file younger than an hour (%v)", err)
	}
}

func TestPrune_Invalid(t *testing.T) {
	s, _ := newTestStore(t)
	for _, p := range []Policy{{MaxSize: -1}, {MaxAge: -time.Second}} {
		if _, err := s.Prune(context.Background(), p); err == nil {
			t.Errorf("Prune(%+v): got nil, want an error", p)
		}
	}
}

// TestPrune_WhileReading evicts a blob that another goroutine is reading:
// the reader still gets the whole blob, verified.
func TestPrune_WhileReading(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	data := make([]byte, 3<<20+5)
	for i := range data {
		data[i] = byte(i * 7)
	}
	d := put(t, s, data)
	r, err := s.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	started := make(chan struct{})
	pruned := make(chan struct{})
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result)
	go func() {
		head := make([]byte, 4096)
		if _, err := io.ReadFull(r, head); err != nil {
			done <- result{nil, err}
			return
		}
		close(started)
		<-pruned
		rest, err := io.ReadAll(r)
		done <- result{append(head, rest...), err}
	}()
	<-started
	// Opening refreshed nothing (the blob is new); age it past MaxAge.
	setLastUse(t, s, d, t0.Add(-48*time.Hour))
	rep, err := s.Prune(ctx, Policy{MaxAge: 24 * time.Hour})
	close(pruned)
	if err != nil {
		t.Fatal(err)
	}
	if got := digestsOf(rep.Removed); !slices.Equal(got, []digest.Digest{d}) {
		t.Fatalf("Removed: got %v, want [%s]", got, d)
	}
	if _, err := s.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat after Prune: got %v, want ErrNotFound", err)
	}
	res := <-done
	if res.err != nil || !bytes.Equal(res.data, data) {
		t.Errorf("reader of the evicted blob: got %d bytes, %v; want %d bytes, nil", len(res.data), res.err, len(data))
	}
}

// TestEvict_UsedSinceWalk checks the guard that keeps a blob used between
// Prune's walk and its removal: evict compares the mtime with the walk's.
func TestEvict_UsedSinceWalk(t *testing.T) {
	s, _ := newTestStore(t)
	d := put(t, s, []byte("blob"))
	walked := Info{Digest: d, Size: 4, LastUsed: t0.Add(-48 * time.Hour)}
	// The file's mtime is t0, not the walk's: it was used since.
	removed, err := s.evict(context.Background(), walked)
	if err != nil || removed {
		t.Errorf("evict of a blob used since the walk: got (%v, %v), want (false, nil)", removed, err)
	}
	walked.LastUsed = t0
	removed, err = s.evict(context.Background(), walked)
	if err != nil || !removed {
		t.Errorf("evict of an unused blob: got (%v, %v), want (true, nil)", removed, err)
	}
	removed, err = s.evict(context.Background(), walked)
	if err != nil || removed {
		t.Errorf("evict of a blob someone else removed: got (%v, %v), want (false, nil)", removed, err)
	}
}

// TestPrune_TiesEvictLargestFirst: blobs used at the same instant (an image
// warmed at once) go largest first, so a size bound drops layers before the
// manifest that names them.
func TestPrune_TiesEvictLargestFirst(t *testing.T) {
	s, _ := newTestStore(t)
	small := put(t, s, []byte("manifest"))
	large := put(t, s, bytes.Repeat([]byte("L"), 1000))
	medium := put(t, s, bytes.Repeat([]byte("M"), 500))
	for _, d := range []digest.Digest{small, large, medium} {
		setLastUse(t, s, d, t0.Add(-time.Hour))
	}
	rep, err := s.Prune(context.Background(), Policy{MaxSize: 600})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := digestsOf(rep.Removed), []digest.Digest{large}; !slices.Equal(got, want) {
		t.Errorf("Removed: got %v, want %v (the largest of equally old blobs)", got, want)
	}
}
