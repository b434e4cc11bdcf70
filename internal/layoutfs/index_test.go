package layoutfs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
)

func newLayout(t *testing.T) layoutfs.Path {
	t.Helper()
	p, err := layoutfs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadIndex_Missing(t *testing.T) {
	p := newLayout(t)
	if err := os.Remove(p.Join(layoutfs.IndexFile)); err != nil {
		t.Fatal(err)
	}
	idx, err := p.ReadIndex()
	if err != nil {
		t.Fatalf("ReadIndex: %v", err)
	}
	if idx.SchemaVersion != 2 || idx.Manifests == nil || len(idx.Manifests) != 0 {
		t.Errorf("ReadIndex: got %+v, want an empty index", idx)
	}
	// UpdateIndex writes it again.
	addRef(t, p, "a")
	if got, want := refNames(t, p), []string{"a"}; !slices.Equal(got, want) {
		t.Errorf("refs: got %q, want %q", got, want)
	}
}

func TestReadIndex_Bad(t *testing.T) {
	valid := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	tests := []struct {
		content string
		reason  string
	}{
		{"", "empty file"},
		{"garbage\x00\xff", "garbage"},
		{valid[:len(valid)/2], "truncated"},
		{`{"schemaVersion":2,"manifests":[{"digest":"sha256:`, "truncated inside a descriptor"},
		{"null", "JSON null"},
		{"[]", "JSON array"},
		{`{"schemaVersion":1,"manifests":[]}`, "schemaVersion 1"},
		{`{"manifests":[]}`, "no schemaVersion"},
		{`{"schemaVersion":"2"}`, "schemaVersion is a string"},
		{`{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:../../etc/passwd","size":1}]}`, "manifest with a path-traversal digest"},
		{`{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":1}]}`, "manifest with an unsupported algorithm"},
		{valid + strings.Repeat(" ", 16<<20), "huge: a valid index padded past 16 MiB is refused unparsed"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			p := newLayout(t)
			if err := os.WriteFile(p.Join(layoutfs.IndexFile), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := p.ReadIndex(); !errors.Is(err, layoutfs.ErrBadIndex) {
				t.Fatalf("ReadIndex: got %v, want ErrBadIndex", err)
			}
			// UpdateIndex replaces it: fn starts from an empty index.
			var seen int
			err := p.UpdateIndex(t.Context(), func(idx *ocispec.Index) error {
				seen = len(idx.Manifests)
				idx.Manifests = append(idx.Manifests, refDesc("after"))
				return nil
			})
			if err != nil {
				t.Fatalf("UpdateIndex: %v", err)
			}
			if seen != 0 {
				t.Errorf("UpdateIndex saw %d manifests, want 0", seen)
			}
			if got, want := refNames(t, p), []string{"after"}; !slices.Equal(got, want) {
				t.Errorf("refs: got %q, want %q", got, want)
			}
		})
	}
}

func TestReadIndex_PaddedBelowLimit(t *testing.T) {
	// Whitespace is not garbage: an index just under the limit parses.
	p := newLayout(t)
	content := `{"schemaVersion":2,"manifests":[]}` + strings.Repeat("\n", 1<<20)
	if err := os.WriteFile(p.Join(layoutfs.IndexFile), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ReadIndex(); err != nil {
		t.Errorf("ReadIndex: %v", err)
	}
}

func TestUpdateIndex(t *testing.T) {
	p := newLayout(t)
	addRef(t, p, "a")
	addRef(t, p, "b")
	if got, want := refNames(t, p), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Errorf("refs: got %q, want %q", got, want)
	}
	idx, err := p.ReadIndex()
	if err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("index: got schemaVersion %d mediaType %q, want 2 %q", idx.SchemaVersion, idx.MediaType, ocispec.MediaTypeImageIndex)
	}
	// fn may empty the list; index.json then holds [] rather than null,
	// which some readers refuse.
	if err := p.UpdateIndex(t.Context(), func(idx *ocispec.Index) error { idx.Manifests = nil; return nil }); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p.Join(layoutfs.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"manifests": []`)) {
		t.Errorf("index.json: got %s, want an empty manifests array", b)
	}
	assertIngestClean(t, p)
}

// assertIngestClean fails if ingest/ holds anything but the index lock.
func assertIngestClean(t *testing.T, p layoutfs.Path) {
	t.Helper()
	entries, err := os.ReadDir(p.Join(layoutfs.IngestDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != layoutfs.IndexFile+".lock" {
			t.Errorf("ingest/ holds %s, want nothing but the index lock", e.Name())
		}
	}
}

func TestUpdateIndex_FnError(t *testing.T) {
	p := newLayout(t)
	addRef(t, p, "a")
	before, err := os.ReadFile(p.Join(layoutfs.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	errStop := errors.New("stop")
	err = p.UpdateIndex(t.Context(), func(idx *ocispec.Index) error {
		idx.Manifests = nil // changes that must not be written
		return errStop
	})
	if !errors.Is(err, errStop) {
		t.Errorf("UpdateIndex: got %v, want %v", err, errStop)
	}
	after, err := os.ReadFile(p.Join(layoutfs.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("index.json: got %q, want %q", after, before)
	}
	assertIngestClean(t, p)
}

func TestUpdateIndex_WaitsForLock(t *testing.T) {
	p := newLayout(t)
	l, err := p.LockIndex(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	called := false
	err = p.UpdateIndex(ctx, func(*ocispec.Index) error { called = true; return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("UpdateIndex while locked: got %v, want context.DeadlineExceeded", err)
	}
	if called {
		t.Error("UpdateIndex called fn without the lock")
	}
	// Released, the next update goes through.
	done := make(chan error, 1)
	go func() { done <- p.UpdateIndex(t.Context(), func(*ocispec.Index) error { return nil }) }()
	time.Sleep(30 * time.Millisecond)
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Errorf("second Unlock: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("UpdateIndex after unlock: %v", err)
	}
}

func TestUpdateIndex_Goroutines(t *testing.T) {
	p := newLayout(t)
	const goroutines, each = 16, 5
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				name := fmt.Sprintf("g%d-%d", g, i)
				err := p.UpdateIndex(context.Background(), func(idx *ocispec.Index) error {
					idx.Manifests = append(idx.Manifests, refDesc(name))
					return nil
				})
				if err != nil {
					t.Errorf("UpdateIndex %s: %v", name, err)
				}
			}
		})
	}
	wg.Wait()
	var want []string
	for g := range goroutines {
		for i := range each {
			want = append(want, fmt.Sprintf("g%d-%d", g, i))
		}
	}
	assertRefs(t, p, want)
}

// assertRefs checks that the index holds exactly the names in want, each
// once, in any order.
func assertRefs(t *testing.T, p layoutfs.Path, want []string) {
	t.Helper()
	got := refNames(t, p)
	sort.Strings(got)
	want = slices.Clone(want)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("refs: got %d %q, want %d %q", len(got), got, len(want), want)
	}
}

// TestUpdateIndex_Processes has several OS processes (this test binary,
// re-executed) and the parent's goroutines add distinct refs at once;
// the index lock must serialise them so that none is lost.
func TestUpdateIndex_Processes(t *testing.T) {
	const each = 20
	if dir := os.Getenv(childDirEnv); dir != "" {
		id := os.Getenv(childIDEnv)
		testutil.ChildBarrier(t, os.Getenv(childSyncEnv), id)
		for i := range each {
			addRef(t, layoutfs.Path(dir), id+"-"+strconv.Itoa(i))
		}
		return
	}
	p := newLayout(t)
	syncDir := t.TempDir()
	ids := []string{"p0", "p1", "p2"}
	var children []*testutil.Child
	for _, id := range ids {
		children = append(children, testutil.StartChild(t, t.Name(),
			childDirEnv+"="+p.String(), childIDEnv+"="+id, childSyncEnv+"="+syncDir))
	}
	testutil.ReleaseChildren(t, syncDir, ids)
	for i := range each {
		addRef(t, p, "parent-"+strconv.Itoa(i))
	}
	for _, c := range children {
		c.Wait(t)
	}
	var want []string
	for _, id := range append(ids, "parent") {
		for i := range each {
			want = append(want, id+"-"+strconv.Itoa(i))
		}
	}
	assertRefs(t, p, want)
	assertIngestClean(t, p)
}
