package layout_test

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/layout"
)

// One sniffer decides what a manifest is, for a pull and for a rebuild of
// index.json alike.
func TestManifestMediaType(t *testing.T) {
	for _, tc := range []struct {
		raw, want string
	}{
		// The field wins, whatever the shape.
		{`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}`, "application/vnd.docker.distribution.manifest.v2+json"},
		// No field: an index lists manifests and has no config...
		{`{"schemaVersion":2,"manifests":[]}`, ocispec.MediaTypeImageIndex},
		// ...and an image manifest has a config and lists no manifests.
		{`{"schemaVersion":2,"config":{},"layers":[]}`, ocispec.MediaTypeImageManifest},
		// Both, or neither: nothing a pull or a rebuild takes.
		{`{"schemaVersion":2,"config":{},"manifests":[]}`, ""},
		{`{}`, ""},
		{`null`, ""},
		// Not JSON.
		{`<html>`, ""},
	} {
		if got := layout.ManifestMediaType([]byte(tc.raw)); got != tc.want {
			t.Errorf("ManifestMediaType(%s) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}
