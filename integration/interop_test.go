package integration_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrlayout "github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

// TestInterop_Layout warms an image and a multi-platform index, then reads
// the cache directory with tools that know nothing of layercache: ggcr's
// layout package and skopeo's oci: transport. The directory must be an OCI
// image layout whose refs name what was warmed.
func TestInterop_Layout(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	fx := pushImage(t, reg, p, "interop/img:v1", 100<<10, 30<<10)
	platforms := []v1.Platform{
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64", Variant: "v8"},
	}
	idx := regtest.PushIndex(t, reg.Addr+"/interop/idx:v1", platforms, 20<<10)
	idxRef := parseRef(t, p.Addr+"/interop/idx:v1")
	s := openStore(t)
	if _, err := remotecache.Warm(t.Context(), fx.tag, s, cacheOptions(t)...); err != nil {
		t.Fatalf("Warm %s: %v", fx.tag, err)
	}
	if _, err := remotecache.Warm(t.Context(), idxRef, s, cacheOptions(t, remotecache.WithAllPlatforms())...); err != nil {
		t.Fatalf("Warm %s: %v", idxRef, err)
	}
	// The registry is not needed from here on: prove it.
	reg.Stop()

	t.Run("ggcr layout", func(t *testing.T) {
		lp, err := ggcrlayout.FromPath(s.Dir())
		if err != nil {
			t.Fatalf("layout.FromPath: %v", err)
		}
		ii, err := ggcrlayout.ImageIndexFromPath(s.Dir())
		if err != nil {
			t.Fatalf("layout.ImageIndexFromPath: %v", err)
		}
		if err := validate.Index(ii, validate.Fast); err != nil {
			// Fast: the index of refs is only the entry point; what
			// each ref names is validated in full below.
			t.Errorf("validate.Index(index.json): %v", err)
		}

		desc := findRef(t, ii, fx.tag)
		img, err := ii.Image(desc.Digest)
		if err != nil {
			t.Fatalf("image %s: %v", desc.Digest, err)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("validate.Image: %v", err)
		}
		assertPulled(t, "ggcr layout image", readImage(t, img), fx.want)
		// Through the layout.Path API too, the way crane does.
		if _, err := lp.Image(desc.Digest); err != nil {
			t.Errorf("layout.Path.Image: %v", err)
		}

		desc = findRef(t, ii, idxRef)
		if !desc.MediaType.IsIndex() {
			t.Fatalf("%s is recorded as %s, want an index", idxRef, desc.MediaType)
		}
		child, err := ii.ImageIndex(desc.Digest)
		if err != nil {
			t.Fatalf("index %s: %v", desc.Digest, err)
		}
		if d := must(child.Digest()); d != must(idx.Digest()) {
			t.Errorf("index digest %s, want %s", d, must(idx.Digest()))
		}
		if err := validate.Index(child); err != nil {
			t.Errorf("validate.Index: %v", err)
		}
	})

	t.Run("skopeo", func(t *testing.T) {
		skopeo, err := exec.LookPath("skopeo")
		if err != nil {
			// make test installs it (.ci/install-deps.sh); in CI a
			// missing skopeo is a broken set-up, not a reason to skip.
			if os.Getenv("CI") == "true" {
				t.Fatalf("skopeo is not on PATH, and CI=true: %v", err)
			}
			t.Skipf("skopeo is not on PATH (make test installs it with .ci/install-deps.sh): %v", err)
		}
		// oci:DIR:REF. skopeo splits at the first colon, so DIR must
		// have none and REF may hold more (the port, the tag).
		inspect := func(t *testing.T, ref name.Reference, args ...string) []byte {
			t.Helper()
			arg := "oci:" + s.Dir() + ":" + ref.Name()
			cmd := exec.CommandContext(t.Context(), skopeo, append(append([]string{"inspect"}, args...), arg)...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("skopeo inspect %v %s: %v\n%s", args, arg, err, stderr.String())
			}
			return out
		}
		var info struct {
			Digest string
			Layers []string
		}

		// The image: its manifest, digest and layers.
		if raw := inspect(t, fx.tag, "--raw"); !bytes.Equal(raw, fx.want.manifest) {
			t.Errorf("skopeo inspect --raw: got %s, want the pushed manifest %s", raw, fx.want.manifest)
		}
		if err := json.Unmarshal(inspect(t, fx.tag), &info); err != nil {
			t.Fatal(err)
		}
		t.Logf("skopeo inspect oci:%s:%s: digest %s, %d layers", s.Dir(), fx.tag.Name(), info.Digest, len(info.Layers))
		var want []string
		for _, l := range fx.want.layers {
			want = append(want, l.digest.String())
		}
		if info.Digest != fx.want.digest.String() || !slices.Equal(info.Layers, want) {
			t.Errorf("skopeo inspect: digest %s, layers %q; want %s, %q", info.Digest, info.Layers, fx.want.digest, want)
		}

		// The index: its raw bytes, and the image of this machine's
		// platform (linux/amd64 on CI), which skopeo picks from it.
		if raw := inspect(t, idxRef, "--raw"); !bytes.Equal(raw, must(idx.RawManifest())) {
			t.Errorf("skopeo inspect --raw of the index: got %s, want %s", raw, must(idx.RawManifest()))
		}
		if err := json.Unmarshal(inspect(t, idxRef, "--override-os=linux", "--override-arch=amd64"), &info); err != nil {
			t.Fatal(err)
		}
		amd64 := imageFor(t, idx, platforms[0])
		want = nil
		for _, l := range must(amd64.Manifest()).Layers {
			want = append(want, l.Digest.String())
		}
		if !slices.Equal(info.Layers, want) {
			t.Errorf("skopeo inspect of the index: layers %q; want the linux/amd64 image's %q", info.Layers, want)
		}
	})
}

// findRef returns the descriptor of index.json whose ref name annotation
// is ref's full name.
func findRef(t *testing.T, ii v1.ImageIndex, ref name.Reference) v1.Descriptor {
	t.Helper()
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, desc := range im.Manifests {
		n := desc.Annotations[ocispec.AnnotationRefName]
		if n == ref.Name() {
			return desc
		}
		names = append(names, n)
	}
	t.Fatalf("index.json has no ref %q; it has %q", ref.Name(), names)
	return v1.Descriptor{}
}

func imageFor(t *testing.T, idx v1.ImageIndex, p v1.Platform) v1.Image {
	t.Helper()
	for _, desc := range must(idx.IndexManifest()).Manifests {
		if desc.Platform != nil && desc.Platform.Equals(p) {
			return must(idx.Image(desc.Digest))
		}
	}
	t.Fatalf("index has no image for %s", p.String())
	return nil
}
