package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrlayout "github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/pkg/store"
)

func manifestDesc(content string) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest,
		Digest:    digest.FromString(content),
		Size:      int64(len(content)),
	}
}

func refNames(t *testing.T, s *store.Store) []string {
	t.Helper()
	refs, err := s.Refs(context.Background())
	if err != nil {
		t.Fatalf("Refs: %v", err)
	}
	var names []string
	for _, r := range refs {
		names = append(names, r.Annotations[ocispec.AnnotationRefName])
	}
	return names
}

func TestRefs(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	ctx := context.Background()
	if got := refNames(t, s); len(got) != 0 {
		t.Errorf("Refs of a new store: got %q, want none", got)
	}
	if _, err := s.Resolve(ctx, "example.com/app:v1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Resolve of a missing ref: got %v, want ErrNotFound", err)
	}

	v1desc := manifestDesc("manifest v1")
	v1desc.Annotations = map[string]string{"org.example.keep": "yes"}
	if err := s.Tag(ctx, "example.com/app:v1", v1desc); err != nil {
		t.Fatalf("Tag: %v", err)
	}
	if _, ok := v1desc.Annotations[ocispec.AnnotationRefName]; ok {
		t.Error("Tag changed the caller's annotations map")
	}
	if err := s.Tag(ctx, "example.com/app:v2", manifestDesc("manifest v2")); err != nil {
		t.Fatal(err)
	}
	if got, want := refNames(t, s), []string{"example.com/app:v1", "example.com/app:v2"}; !slices.Equal(got, want) {
		t.Errorf("Refs: got %q, want %q (file order)", got, want)
	}
	got, err := s.Resolve(ctx, "example.com/app:v1")
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if got.Digest != v1desc.Digest || got.Size != v1desc.Size || got.MediaType != v1desc.MediaType {
		t.Errorf("Resolve: got %+v, want %+v", got, v1desc)
	}
	if got.Annotations["org.example.keep"] != "yes" || got.Annotations[ocispec.AnnotationRefName] != "example.com/app:v1" {
		t.Errorf("Resolve annotations: got %v, want the caller's plus the ref name", got.Annotations)
	}

	// Tagging a name again replaces its entry.
	moved := manifestDesc("manifest v1, rebuilt")
	if err := s.Tag(ctx, "example.com/app:v1", moved); err != nil {
		t.Fatal(err)
	}
	if got, want := refNames(t, s), []string{"example.com/app:v2", "example.com/app:v1"}; !slices.Equal(got, want) {
		t.Errorf("Refs after retag: got %q, want %q", got, want)
	}
	if got, err := s.Resolve(ctx, "example.com/app:v1"); err != nil || got.Digest != moved.Digest {
		t.Errorf("Resolve after retag: got (%s, %v), want %s", got.Digest, err, moved.Digest)
	}

	// Untag ignores names that are not there.
	if err := s.Untag(ctx, "example.com/app:v1", "example.com/never:tagged"); err != nil {
		t.Fatalf("Untag: %v", err)
	}
	if got, want := refNames(t, s), []string{"example.com/app:v2"}; !slices.Equal(got, want) {
		t.Errorf("Refs after Untag: got %q, want %q", got, want)
	}
	if err := s.Untag(ctx); err != nil {
		t.Errorf("Untag of nothing: %v", err)
	}
}

func TestTag_Refused(t *testing.T) {
	tests := []struct {
		name    string
		desc    ocispec.Descriptor
		wantErr error // nil: any error
		reason  string
	}{
		{"", manifestDesc("m"), nil, "empty ref name"},
		{"example.com/app:v1", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: "sha256:../../etc/passwd", Size: 1}, store.ErrInvalidDigest,
			"invalid digest: it would make index.json unreadable and lose every other ref at the next update"},
		{"example.com/app:v1", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Size: 1}, store.ErrInvalidDigest, "no digest"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			s := mustOpen(t, t.TempDir())
			ctx := context.Background()
			if err := s.Tag(ctx, "example.com/kept:1", manifestDesc("kept")); err != nil {
				t.Fatal(err)
			}
			before, err := os.ReadFile(layoutfs.Path(s.Dir()).Join(layoutfs.IndexFile))
			if err != nil {
				t.Fatal(err)
			}
			err = s.Tag(ctx, tc.name, tc.desc)
			if err == nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Tag: got %v, want %v", err, tc.wantErr)
			}
			after, err := os.ReadFile(layoutfs.Path(s.Dir()).Join(layoutfs.IndexFile))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Errorf("index.json: got %s, want it unchanged: %s", after, before)
			}
			if got, want := refNames(t, s), []string{"example.com/kept:1"}; !slices.Equal(got, want) {
				t.Errorf("Refs: got %q, want %q", got, want)
			}
		})
	}
}

func TestRefs_SkipsUnnamedEntries(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	ctx := context.Background()
	err := layoutfs.Path(s.Dir()).UpdateIndex(ctx, func(idx *ocispec.Index) error {
		idx.Manifests = append(idx.Manifests, manifestDesc("unnamed, written by another tool"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, "named", manifestDesc("named")); err != nil {
		t.Fatal(err)
	}
	if got, want := refNames(t, s), []string{"named"}; !slices.Equal(got, want) {
		t.Errorf("Refs: got %q, want %q", got, want)
	}
	// Untag and Tag keep the other tool's entry.
	if err := s.Untag(ctx, "named"); err != nil {
		t.Fatal(err)
	}
	idx, err := layoutfs.Path(s.Dir()).ReadIndex()
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 {
		t.Errorf("index after Untag: got %d entries, want the unnamed one kept", len(idx.Manifests))
	}
}

func TestRefs_BadIndex(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	ctx := context.Background()
	testutil.WriteFile(t, layoutfs.Path(s.Dir()).Join(layoutfs.IndexFile), `{"schemaVersion":2,"manifests":[`)
	if _, err := s.Refs(ctx); !errors.Is(err, layoutfs.ErrBadIndex) {
		t.Errorf("Refs: got %v, want ErrBadIndex", err)
	}
	if _, err := s.Resolve(ctx, "x"); !errors.Is(err, layoutfs.ErrBadIndex) {
		t.Errorf("Resolve: got %v, want ErrBadIndex", err)
	}
	// A Tag replaces the unreadable index.
	if err := s.Tag(ctx, "x", manifestDesc("x")); err != nil {
		t.Fatalf("Tag over a bad index: %v", err)
	}
	if got, want := refNames(t, s), []string{"x"}; !slices.Equal(got, want) {
		t.Errorf("Refs: got %q, want %q", got, want)
	}
}

func TestTag_Concurrent(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	var wg sync.WaitGroup
	var want []string
	for g := range 8 {
		for i := range 4 {
			want = append(want, fmt.Sprintf("example.com/g%d:%d", g, i))
		}
		wg.Go(func() {
			for i := range 4 {
				name := fmt.Sprintf("example.com/g%d:%d", g, i)
				if err := s.Tag(context.Background(), name, manifestDesc(name)); err != nil {
					t.Errorf("Tag %s: %v", name, err)
				}
			}
		})
	}
	wg.Wait()
	got := refNames(t, s)
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("Refs: got %d %q, want %d %q", len(got), got, len(want), want)
	}
}

// TestTag_GGCRReadsImage stores an image's blobs, tags its manifest, and
// reads it back with go-containerregistry's layout package, as crane does
// with an OCI layout directory.
func TestTag_GGCRReadsImage(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	ctx := context.Background()
	layer := []byte("not really a tarball, but ggcr does not look inside")
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` +
		digest.FromBytes(layer).String() + `"]},"config":{}}`)
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: int64(len(layer))}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{layer, config, manifest} {
		mustPut(t, s, b)
	}
	md := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
	if err := s.Tag(ctx, "example.com/app:v1", md); err != nil {
		t.Fatal(err)
	}

	lp, err := ggcrlayout.FromPath(s.Dir())
	if err != nil {
		t.Fatalf("ggcr FromPath: %v", err)
	}
	ii, err := lp.ImageIndex()
	if err != nil {
		t.Fatalf("ggcr ImageIndex: %v", err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatalf("ggcr IndexManifest: %v", err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations[ocispec.AnnotationRefName] != "example.com/app:v1" {
		t.Fatalf("ggcr sees %+v, want one manifest named example.com/app:v1", im.Manifests)
	}
	h, err := v1.NewHash(md.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	img, err := ii.Image(h)
	if err != nil {
		t.Fatalf("ggcr Image: %v", err)
	}
	raw, err := img.RawManifest()
	if err != nil || !bytes.Equal(raw, manifest) {
		t.Errorf("ggcr RawManifest: got (%s, %v), want %s", raw, err, manifest)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("ggcr Layers: got (%d, %v), want 1 layer", len(layers), err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, layer) {
		t.Errorf("ggcr layer bytes: got (%q, %v), want %q", got, err, layer)
	}
}
