package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/pkg/store"
)

// TestTables_EscapeControlCharacters plants a ref name, a layer media type
// and a config's OS holding a terminal escape ("\x1b[2J" clears the
// screen) and checks that the tables of images, ls and prune print them
// escaped, as Go quotes them, and never the raw ESC; --json output keeps
// the value, which JSON already escapes.
func TestTables_EscapeControlCharacters(t *testing.T) {
	t.Parallel()
	const esc = "\x1b[2J"
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "cache")
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) ocispec.Descriptor {
		d, err := s.Put(ctx, strings.NewReader(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}
	}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	config := put(mustJSON(map[string]any{"os": "linux" + esc, "architecture": "amd64", "rootfs": map[string]any{"type": "layers"}}))
	config.MediaType = ocispec.MediaTypeImageConfig
	layer := put([]byte("layer bytes"))
	layer.MediaType = "application/vnd.oci.image.layer.v1.tar" + esc
	manifest := put(mustJSON(ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    config,
		Layers:    []ocispec.Descriptor{layer},
	}))
	manifest.MediaType = ocispec.MediaTypeImageManifest
	ref := "example.com/evil:1" + esc
	if err := s.Tag(ctx, ref, manifest); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"images"},
		{"ls"},
		{"prune", "--max-size", "1", "--dry-run"},
	} {
		out := mustRun(t, append([]string{"--cache-dir", dir}, args...)...)
		if strings.Contains(out, "\x1b") {
			t.Errorf("%s printed a raw ESC:\n%q", args[0], out)
		}
		if !strings.Contains(out, `\x1b[2J`) {
			t.Errorf("%s did not print the escape escaped (\\x1b[2J):\n%s", args[0], out)
		}
	}
	if out := mustRun(t, "--cache-dir", dir, "images"); !strings.Contains(out, `"example.com/evil:1\x1b[2J"`) || !strings.Contains(out, `"linux\x1b[2J/amd64"`) {
		t.Errorf("images: want the ref and the platform quoted:\n%s", out)
	}

	var images []imageEntry
	if err := json.Unmarshal([]byte(mustRun(t, "--cache-dir", dir, "images", "--json")), &images); err != nil {
		t.Fatal(err)
	}
	if len(images) != 1 || images[0].Ref != ref {
		t.Errorf("images --json: got %+v, want the ref %q as it is", images, ref)
	}
	var blobs []blobJSON
	if err := json.Unmarshal([]byte(mustRun(t, "--cache-dir", dir, "ls", "--json")), &blobs); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, b := range blobs {
		found = found || b.MediaType == layer.MediaType
	}
	if !found {
		t.Errorf("ls --json: no blob has the media type %q as it is: %+v", layer.MediaType, blobs)
	}
}
