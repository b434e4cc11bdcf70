package remotecache_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// attested is an index as BuildKit pushes one with --attest: an image
// per platform, and beside each an attestation manifest about it.
type attested struct {
	ref     name.Reference
	digest  v1.Hash
	images  []v1.Image // linux/amd64, linux/arm64
	attests []v1.Image // one per image, in the same order
}

// pushAttested pushes an attested index as repoTag.
func (r *testRegistry) pushAttested(t testing.TB, repoTag string, seed int64) *attested {
	t.Helper()
	a := &attested{ref: r.ref(t, repoTag)}
	var adds []mutate.IndexAddendum
	for i, p := range []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}} {
		img := randomImage(t, seed+int64(i), 2, 2048)
		cf := must(img.ConfigFile())
		cf.OS, cf.Architecture = p.OS, p.Architecture
		img = must(mutate.ConfigFile(img, cf))
		att := attestation(t, fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v0.1","n":%d}`, i))
		p := p
		adds = append(adds,
			mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}},
			mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{
				Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
				Annotations: map[string]string{
					remotecache.AnnotationReferenceType: remotecache.ReferenceTypeAttestation,
					"vnd.docker.reference.digest":       must(img.Digest()).String(),
				},
			}})
		a.images = append(a.images, img)
		a.attests = append(a.attests, att)
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	if err := remote.WriteIndex(a.ref, idx); err != nil {
		t.Fatalf("pushing %s: %v", a.ref, err)
	}
	a.digest = must(idx.Digest())
	r.reset()
	return a
}

// attestation is an attestation manifest: a config that says
// unknown/unknown, and an in-toto statement as its one layer.
func attestation(t testing.TB, stmt string) v1.Image {
	t.Helper()
	img := must(mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), static.NewLayer([]byte(stmt), "application/vnd.in-toto+json")))
	cf := must(img.ConfigFile())
	cf.OS, cf.Architecture = "unknown", "unknown"
	return must(mutate.ConfigFile(img, cf))
}

// blobsOf is the manifest, config and layer digests of img.
func blobsOf(t testing.TB, img v1.Image) []v1.Hash {
	t.Helper()
	out := []v1.Hash{must(img.Digest()), must(img.ConfigName())}
	for _, l := range must(img.Layers()) {
		out = append(out, must(l.Digest()))
	}
	return out
}

// Warm with WithAllPlatforms leaves attestation manifests out, and takes
// them with WithAttestations; one platform never takes them.
func TestWarm_Attestations(t *testing.T) {
	reg := newTestRegistry(t)
	a := reg.pushAttested(t, "test/attested:v1", 70)
	tests := []struct {
		name      string
		opts      []remotecache.Option
		platforms []string
		images    []v1.Image // warmed
		left      []v1.Image // not warmed
	}{
		// The default: every platform, no attestation.
		{"all platforms", []remotecache.Option{remotecache.WithAllPlatforms()},
			[]string{"linux/amd64", "linux/arm64"}, a.images, a.attests},
		{"all platforms and attestations", []remotecache.Option{remotecache.WithAllPlatforms(), remotecache.WithAttestations()},
			[]string{"linux/amd64", "unknown/unknown", "linux/arm64", "unknown/unknown"}, append(a.images, a.attests...), nil},
		// An attestation says unknown/unknown: no platform a build asks
		// for selects it, WithAttestations or not.
		{"one platform and attestations", []remotecache.Option{remotecache.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm64"}), remotecache.WithAttestations()},
			[]string{"linux/arm64"}, a.images[1:], append([]v1.Image{a.images[0]}, a.attests...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openStore(t)
			rep, err := remotecache.Warm(t.Context(), a.ref, s, append(tc.opts, fast)...)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rep.Platforms, tc.platforms) {
				t.Errorf("Platforms = %q, want %q", rep.Platforms, tc.platforms)
			}
			for _, img := range tc.images {
				for _, h := range blobsOf(t, img) {
					assertStored(t, s, h)
				}
			}
			for _, img := range tc.left {
				// The config of an attestation may be shared; its
				// manifest and statement are its own.
				for _, h := range []v1.Hash{must(img.Digest()), must(must(img.Layers())[0].Digest())} {
					assertNotStored(t, s, h)
				}
			}
		})
	}
}

func TestIsAttestation(t *testing.T) {
	for _, tc := range []struct {
		why  string
		desc v1.Descriptor
		want bool
	}{
		{"BuildKit's annotation", v1.Descriptor{Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest"}}, true},
		{"an image of a platform", v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}, false},
		{"unknown/unknown without the annotation is not proof", v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"}}, false},
		{"another reference type", v1.Descriptor{Annotations: map[string]string{"vnd.docker.reference.type": "signature"}}, false},
	} {
		if got := remotecache.IsAttestation(tc.desc); got != tc.want {
			t.Errorf("%s: IsAttestation = %v, want %v", tc.why, got, tc.want)
		}
	}
}
