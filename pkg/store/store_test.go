package store_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/pkg/store"
)

func mustOpen(t *testing.T, dir string, opts ...store.Option) *store.Store {
	t.Helper()
	s, err := store.Open(dir, opts...)
	if err != nil {
		t.Fatalf("store.Open(%s): %v", dir, err)
	}
	return s
}

func mustPut(t *testing.T, s *store.Store, data []byte) digest.Digest {
	t.Helper()
	d, err := s.Put(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return d
}

func setAge(t *testing.T, path string, age time.Duration) {
	t.Helper()
	when := time.Now().Add(-age)
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}

// listTree returns the relative paths below root, sorted.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestOpen_Refused(t *testing.T) {
	tests := []struct {
		setup  func(t *testing.T, dir string) string
		reason string
	}{
		{func(t *testing.T, dir string) string {
			testutil.WriteFile(t, filepath.Join(dir, "go.mod"), "module example.com/me\n")
			return dir
		}, "a project directory, not a cache"},
		{func(t *testing.T, dir string) string {
			testutil.WriteFile(t, filepath.Join(dir, "cache"), "a file")
			return filepath.Join(dir, "cache")
		}, "a file"},
		{func(t *testing.T, dir string) string {
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.LayoutFile), "{")
			return dir
		}, "an oci-layout that is not JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			dir := t.TempDir()
			arg := tc.setup(t, dir)
			before := listTree(t, dir)
			s, err := store.Open(arg)
			if !errors.Is(err, store.ErrNotLayout) {
				t.Fatalf("Open: got (%v, %v), want ErrNotLayout", s, err)
			}
			if s != nil {
				t.Errorf("Open returned a store with an error")
			}
			if got := listTree(t, dir); strings.Join(got, ",") != strings.Join(before, ",") {
				t.Errorf("Open wrote into a refused directory: got %q, want %q", got, before)
			}
		})
	}
}

func TestOpen_CreatesAndReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "_build", "ocibuild_cache")
	s := mustOpen(t, dir)
	if s.Dir() != dir || layoutfs.Path(s.Dir()).String() != dir {
		t.Errorf("Dir: got %q and %q, want %q", s.Dir(), layoutfs.Path(s.Dir()), dir)
	}
	for _, name := range []string{layoutfs.LayoutFile, layoutfs.IndexFile, layoutfs.BlobsDir, layoutfs.IngestDir} {
		if !testutil.Exists(t, filepath.Join(dir, name)) {
			t.Errorf("%s missing after Open", name)
		}
	}
	data := []byte("kept across opens")
	d := mustPut(t, s, data)

	s2 := mustOpen(t, dir, store.WithDurable())
	got, err := s2.Get(context.Background(), d)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("Get after reopening: got (%q, %v), want %q", got, err, data)
	}
}

func TestOpen_SweepsStaleFiles(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	ingest := layoutfs.Path(s.Dir()).Join(layoutfs.IngestDir)
	unheld := digest.FromString("unheld")
	l, err := layoutfs.Path(s.Dir()).LockBlob(context.Background(), unheld)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	if err := layoutfs.Path(s.Dir()).UpdateIndex(context.Background(), func(*ocispec.Index) error { return nil }); err != nil {
		t.Fatal(err)
	}
	files := []struct {
		name   string
		age    time.Duration
		kept   bool
		reason string
	}{
		{"blob-old.tmp", 2 * time.Hour, false, "temp file of a writer that crashed two hours ago"},
		{"blob-hour.tmp", time.Hour + time.Minute, false, "just over an hour old"},
		{"blob-young.tmp", 10 * time.Minute, true, "temp file of a live writer"},
		{"sha256-" + unheld.Encoded() + ".lock", 2 * time.Hour, false, "old lock file nobody holds"},
		{layoutfs.IndexFile + ".lock", 2 * time.Hour, true, "the index lock is never removed"},
	}
	for _, f := range files {
		path := filepath.Join(ingest, f.name)
		if !testutil.Exists(t, path) {
			testutil.WriteFile(t, path, "x")
		}
		setAge(t, path, f.age)
	}
	mustOpen(t, dir)
	for _, f := range files {
		if got := testutil.Exists(t, filepath.Join(ingest, f.name)); got != f.kept {
			t.Errorf("%s (%s): exists after Open = %v, want %v", f.name, f.reason, got, f.kept)
		}
	}
}

func TestErrors_AreLayoutValues(t *testing.T) {
	// errors.Is works across the layers because they are the same values.
	if store.ErrInvalidDigest != layoutfs.ErrInvalidDigest {
		t.Error("store.ErrInvalidDigest is not layoutfs.ErrInvalidDigest")
	}
	if store.ErrNotLayout != layoutfs.ErrNotLayout {
		t.Error("store.ErrNotLayout is not layoutfs.ErrNotLayout")
	}
	sentinels := []error{store.ErrNotFound, store.ErrCorrupted, store.ErrInvalidDigest, store.ErrDigestMismatch, store.ErrNotLayout}
	for i, a := range sentinels {
		for j, b := range sentinels {
			if i != j && errors.Is(a, b) {
				t.Errorf("%v matches %v", a, b)
			}
		}
	}
}

func TestErrors_NameDigestAndPath(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	ctx := context.Background()
	d := mustPut(t, s, []byte("blob"))
	path, _ := layoutfs.Path(s.Dir()).BlobPath(d)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testutil.WriteFile(t, path, "blub")
	_, err := s.Get(ctx, d)
	if !errors.Is(err, store.ErrCorrupted) || !strings.Contains(err.Error(), string(d)) || !strings.Contains(err.Error(), path) {
		t.Errorf("Get of a corrupted blob: got %q, want ErrCorrupted naming %s and %s", err, d, path)
	}
	_, err = s.Get(ctx, d)
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), string(d)) {
		t.Errorf("Get of a missing blob: got %q, want ErrNotFound naming %s", err, d)
	}
}

func TestWithLogger(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dir := t.TempDir()
	s := mustOpen(t, dir, store.WithLogger(logger))
	d := mustPut(t, s, []byte("blob"))
	path, _ := layoutfs.Path(s.Dir()).BlobPath(d)
	os.Remove(path)
	testutil.WriteFile(t, path, "blub")
	if _, err := s.Get(context.Background(), d); !errors.Is(err, store.ErrCorrupted) {
		t.Fatalf("Get: got %v, want ErrCorrupted", err)
	}
	if !strings.Contains(buf.String(), "removed corrupted blob") || !strings.Contains(buf.String(), string(d)) {
		t.Errorf("log: got %q, want the removal of %s reported", buf.String(), d)
	}

	// Sweeps are reported too.
	buf.Reset()
	stale := layoutfs.Path(s.Dir()).Join(layoutfs.IngestDir, "blob-stale.tmp")
	testutil.WriteFile(t, stale, "x")
	setAge(t, stale, 2*time.Hour)
	mustOpen(t, dir, store.WithLogger(logger))
	if !strings.Contains(buf.String(), "swept") {
		t.Errorf("log: got %q, want the sweep reported", buf.String())
	}

	// A nil logger means the default, which discards.
	s = mustOpen(t, t.TempDir(), store.WithLogger(nil))
	mustPut(t, s, []byte("x"))
}

// TestDependencies checks the rule of DESIGN.md: layout and pkg/store
// speak digest.Digest and never import go-containerregistry (remote least
// of all), so the library core stays small and registry-free.
func TestDependencies(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("go command not found, and CI=true: %v", err)
		}
		t.Skip("go command not found")
	}
	out, err := exec.Command(goTool, "list", "-deps",
		"github.com/ocibuild/layercache/layout",
		"github.com/ocibuild/layercache/internal/layoutfs",
		"github.com/ocibuild/layercache/pkg/store",
	).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "github.com/google/go-containerregistry/") {
			t.Errorf("layout or pkg/store depends on %s", pkg)
		}
	}
}
