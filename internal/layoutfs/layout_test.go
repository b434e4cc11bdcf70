package layoutfs_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	ggcrlayout "github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
)

const wantLayoutFile = `{"imageLayoutVersion":"1.0.0"}`

// assertLayout fails the test unless p holds a complete layout.
func assertLayout(t *testing.T, p layoutfs.Path) {
	t.Helper()
	b, err := os.ReadFile(p.Join(layoutfs.LayoutFile))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != wantLayoutFile {
		t.Errorf("oci-layout: got %q, want %q", b, wantLayoutFile)
	}
	for _, d := range []string{layoutfs.BlobsDir, layoutfs.IngestDir} {
		if fi, err := os.Stat(p.Join(d)); err != nil || !fi.IsDir() {
			t.Errorf("%s: not a directory (%v)", d, err)
		}
	}
	if _, err := p.ReadIndex(); err != nil {
		t.Errorf("ReadIndex: %v", err)
	}
}

// addRef adds a ref named name to the index of p.
func addRef(t *testing.T, p layoutfs.Path, name string) {
	t.Helper()
	err := p.UpdateIndex(context.Background(), func(idx *ocispec.Index) error {
		idx.Manifests = append(idx.Manifests, refDesc(name))
		return nil
	})
	if err != nil {
		t.Fatalf("UpdateIndex: %v", err)
	}
}

func refDesc(name string) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType:   ocispec.MediaTypeImageManifest,
		Digest:      digest.FromString(name),
		Size:        int64(len(name)),
		Annotations: map[string]string{ocispec.AnnotationRefName: name},
	}
}

func refNames(t *testing.T, p layoutfs.Path) []string {
	t.Helper()
	idx, err := p.ReadIndex()
	if err != nil {
		t.Fatalf("ReadIndex: %v", err)
	}
	var names []string
	for _, m := range idx.Manifests {
		names = append(names, m.Annotations[ocispec.AnnotationRefName])
	}
	return names
}

func TestCreate(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares the directory and returns the path to pass to Create.
		setup func(t *testing.T, dir string) string
		// check runs on the created layout.
		check func(t *testing.T, p layoutfs.Path)
	}{
		{
			name:  "missing directory, with missing parents, is created",
			setup: func(t *testing.T, dir string) string { return filepath.Join(dir, "a", "b", "cache") },
		},
		{
			name:  "empty directory is initialised",
			setup: func(t *testing.T, dir string) string { return dir },
		},
		{
			name: "existing layout is reused and its refs and blobs kept",
			setup: func(t *testing.T, dir string) string {
				p, err := layoutfs.Create(dir)
				if err != nil {
					t.Fatal(err)
				}
				addRef(t, p, "example.com/app:v1")
				testutil.WriteFile(t, filepath.Join(dir, "blobs", "sha256", "ab"), "kept")
				return dir
			},
			check: func(t *testing.T, p layoutfs.Path) {
				if got, want := refNames(t, p), []string{"example.com/app:v1"}; !slices.Equal(got, want) {
					t.Errorf("refs: got %q, want %q", got, want)
				}
				if !testutil.Exists(t, p.Join("blobs", "sha256", "ab")) {
					t.Error("a file of the reused layout was removed")
				}
			},
		},
		{
			name: "layout written by another tool (no blobs/, no ingest/) gets its folders",
			setup: func(t *testing.T, dir string) string {
				testutil.WriteFile(t, filepath.Join(dir, layoutfs.LayoutFile), wantLayoutFile)
				testutil.WriteFile(t, filepath.Join(dir, layoutfs.IndexFile), `{"schemaVersion":2,"manifests":[]}`)
				return dir
			},
		},
		{
			name: "leftovers of an interrupted Create (ingest/, blobs/, no oci-layout) are finished",
			setup: func(t *testing.T, dir string) string {
				for _, d := range []string{layoutfs.IngestDir, layoutfs.BlobsDir} {
					if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
						t.Fatal(err)
					}
				}
				return dir
			},
		},
		{
			name: "relative path becomes absolute",
			setup: func(t *testing.T, dir string) string {
				t.Chdir(dir)
				return "cache"
			},
			check: func(t *testing.T, p layoutfs.Path) {
				if !filepath.IsAbs(p.String()) {
					t.Errorf("Path: got %q, want an absolute path", p)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			arg := tc.setup(t, t.TempDir())
			p, err := layoutfs.Create(arg)
			if err != nil {
				t.Fatalf("Create(%q): %v", arg, err)
			}
			abs, _ := filepath.Abs(arg)
			if p.String() != abs {
				t.Errorf("Path: got %q, want %q", p, abs)
			}
			assertLayout(t, p)
			if tc.check != nil {
				tc.check(t, p)
			}
			// A second Create reuses what the first made.
			if _, err := layoutfs.Create(arg); err != nil {
				t.Errorf("second Create: %v", err)
			}
		})
	}
}

func TestCreate_Refused(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string
	}{
		{
			name: "non-empty directory that is not a layout (say $HOME) is not filled with blobs",
			setup: func(t *testing.T, dir string) string {
				testutil.WriteFile(t, filepath.Join(dir, ".bashrc"), "export PS1=$ ")
				testutil.WriteFile(t, filepath.Join(dir, "src", "main.go"), "package main")
				return dir
			},
		},
		{
			name: "foreign file beside our own folders",
			setup: func(t *testing.T, dir string) string {
				if err := os.Mkdir(filepath.Join(dir, layoutfs.BlobsDir), 0o755); err != nil {
					t.Fatal(err)
				}
				testutil.WriteFile(t, filepath.Join(dir, "notes.txt"), "mine")
				return dir
			},
		},
		{
			name: "path is a file",
			setup: func(t *testing.T, dir string) string {
				path := filepath.Join(dir, "cache")
				testutil.WriteFile(t, path, "a file, not a directory")
				return path
			},
		},
		{
			name: "oci-layout is not JSON",
			setup: func(t *testing.T, dir string) string {
				testutil.WriteFile(t, filepath.Join(dir, layoutfs.LayoutFile), "imageLayoutVersion=1.0.0")
				return dir
			},
		},
		{
			name: "oci-layout is JSON without imageLayoutVersion",
			setup: func(t *testing.T, dir string) string {
				testutil.WriteFile(t, filepath.Join(dir, layoutfs.LayoutFile), `{"version":"1.0.0"}`)
				return dir
			},
		},
		{
			name: "oci-layout is truncated",
			setup: func(t *testing.T, dir string) string {
				testutil.WriteFile(t, filepath.Join(dir, layoutfs.LayoutFile), wantLayoutFile[:10])
				return dir
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			arg := tc.setup(t, dir)
			before := testutil.Snapshot(t, dir)
			p, err := layoutfs.Create(arg)
			if !errors.Is(err, layoutfs.ErrNotLayout) {
				t.Fatalf("Create(%q): got (%q, %v), want ErrNotLayout", arg, p, err)
			}
			if p != "" {
				t.Errorf("Path: got %q, want %q", p, "")
			}
			testutil.AssertUnchanged(t, dir, before)
		})
	}
}

func TestCreate_Concurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := layoutfs.Create(dir); err != nil {
				t.Errorf("Create: %v", err)
			}
		})
	}
	wg.Wait()
	assertLayout(t, layoutfs.Path(dir))
}

// TestCreate_GGCRReadable checks the promise of the package doc: the
// directory is an OCI image layout that go-containerregistry reads as it is.
func TestCreate_GGCRReadable(t *testing.T) {
	p, err := layoutfs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	check := func(wantRefs []string) {
		t.Helper()
		lp, err := ggcrlayout.FromPath(p.String())
		if err != nil {
			t.Fatalf("ggcr layoutfs.FromPath: %v", err)
		}
		ii, err := lp.ImageIndex()
		if err != nil {
			t.Fatalf("ggcr ImageIndex: %v", err)
		}
		im, err := ii.IndexManifest()
		if err != nil {
			t.Fatalf("ggcr IndexManifest: %v", err)
		}
		var got []string
		for _, m := range im.Manifests {
			got = append(got, m.Annotations[ocispec.AnnotationRefName])
		}
		if !slices.Equal(got, wantRefs) {
			t.Errorf("refs seen by ggcr: got %q, want %q", got, wantRefs)
		}
		if im.SchemaVersion != 2 {
			t.Errorf("schemaVersion: got %d, want 2", im.SchemaVersion)
		}
	}
	check(nil)
	addRef(t, p, "example.com/app:v1")
	check([]string{"example.com/app:v1"})
}

func TestPath_Join(t *testing.T) {
	p := layoutfs.Path("/cache")
	if got, want := p.Join("blobs", "sha256"), "/cache/blobs/sha256"; got != want {
		t.Errorf("Join: got %q, want %q", got, want)
	}
	if got, want := p.Join(), "/cache"; got != want {
		t.Errorf("Join(): got %q, want %q", got, want)
	}
}

func TestIndexJSON_Fresh(t *testing.T) {
	p, err := layoutfs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p.Join(layoutfs.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if got, want := raw["mediaType"], ocispec.MediaTypeImageIndex; got != want {
		t.Errorf("mediaType: got %q, want %q", got, want)
	}
	if m, ok := raw["manifests"].([]any); !ok || len(m) != 0 {
		t.Errorf("manifests: got %v, want []", raw["manifests"])
	}
}
