package remotecache_test

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// problems lists a report's problems as "kind problem digest platform".
func problems(rep remotecache.CheckReport) []string {
	var out []string
	for _, im := range rep.Images {
		for _, p := range im.Problems {
			out = append(out, p.Kind+" "+p.Problem+" "+p.Digest+" "+p.Platform)
		}
	}
	return out
}

// A warmed image checks whole, and Check sends no request at all.
func TestCheck_WarmedImage(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 80, 3, 4096))
	s, _ := openStore(t)
	if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err != nil {
		t.Fatal(err)
	}
	reg.reset()
	byDigest := must(name.NewDigest(fx.ref.Context().Name() + "@" + fx.digest.String()))
	rep, err := remotecache.Check(t.Context(), []name.Reference{fx.ref, byDigest}, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || len(problems(rep)) != 0 {
		t.Errorf("OK() = %v, problems %q; want a whole image", rep.OK(), problems(rep))
	}
	// manifest, config, layers: each counted once over both references
	if want := 2 + len(fx.layers); rep.Blobs != want {
		t.Errorf("Blobs = %d, want %d", rep.Blobs, want)
	}
	if len(rep.Images) != 2 || rep.Images[0].Digest != fx.digest.String() || rep.Images[1].Digest != fx.digest.String() {
		t.Errorf("Images = %+v, want both at %s", rep.Images, fx.digest)
	}
	if n := reg.requestCount(); n != 0 {
		t.Errorf("Check sent %d requests to the registry, want none", n)
	}
}

// Each blob a build needs and the cache cannot serve is one problem, with
// its kind, platform and media type; Check removes nothing and leaves the
// last use of what it reads as it was.
func TestCheck_Problems(t *testing.T) {
	reg := newTestRegistry(t)
	// An image no index describes: its config says the platform.
	img := randomImage(t, 81, 3, 4096)
	cf := must(img.ConfigFile())
	cf.OS, cf.Architecture = "linux", "amd64"
	fx := reg.pushImage(t, "test/img:v1", must(mutate.ConfigFile(img, cf)))
	s, dir := openStore(t)
	if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast); err != nil {
		t.Fatal(err)
	}
	reg.reset()
	old := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	for _, h := range append([]v1.Hash{fx.digest, fx.config}, fx.layers...) {
		if err := os.Chtimes(blobFile(dir, h), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(t.Context(), toDigest(fx.layers[0])); err != nil {
		t.Fatal(err)
	}
	corruptions[1].apply(t, blobFile(dir, fx.layers[2])) // one byte flipped
	never := reg.ref(t, "test/never:v1")

	rep, err := remotecache.Check(t.Context(), []name.Reference{fx.ref, never}, s, fast)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"layer missing " + fx.layers[0].String() + " linux/amd64",
		"layer corrupted " + fx.layers[2].String() + " linux/amd64",
		"ref missing  ",
	}
	if got := problems(rep); !slices.Equal(got, want) {
		t.Errorf("problems:\n got %q\nwant %q", got, want)
	}
	if rep.OK() {
		t.Error("OK() with problems")
	}
	if p := rep.Images[0].Problems[0]; p.MediaType != string(must(must(fx.img.Layers())[0].MediaType())) || p.Error == "" {
		t.Errorf("problem %+v: want the layer's media type and an error", p)
	}
	// manifest, config and the one good layer
	if rep.Blobs != 3 {
		t.Errorf("Blobs = %d, want 3", rep.Blobs)
	}
	if _, err := os.Lstat(blobFile(dir, fx.layers[2])); err != nil {
		t.Errorf("the corrupted layer is gone (%v); Check must leave it", err)
	}
	for _, h := range []v1.Hash{fx.digest, fx.config, fx.layers[1]} {
		if fi, err := os.Stat(blobFile(dir, h)); err != nil || !fi.ModTime().Equal(old) {
			t.Errorf("blob %s: last use moved (%v, %v); Check must not mark blobs used", h, fi.ModTime(), err)
		}
	}
	if n := reg.requestCount(); n != 0 {
		t.Errorf("Check sent %d requests to the registry, want none", n)
	}
}

// Check takes the platforms that Image and Warm take: the platform's image
// (a variant satisfies a platform without one), every platform, and a
// problem for a platform the index lacks.
func TestCheck_Platforms(t *testing.T) {
	reg := newTestRegistry(t)
	fx, byPlatform := reg.pushIndex(t, "test/multi:v1", 82)
	arm := v1.Platform{OS: "linux", Architecture: "arm64"}
	s, _ := openStore(t)
	if _, err := remotecache.Warm(t.Context(), fx.ref, s, fast, remotecache.WithPlatform(arm)); err != nil {
		t.Fatal(err)
	}
	img := must(remotecache.Image(fx.ref, s, fast, remotecache.WithOffline(), remotecache.WithPlatform(arm)))
	if must(img.Digest()) != must(byPlatform["linux/arm64/v8"].Digest()) {
		t.Fatal("Image chose another image than linux/arm64/v8")
	}
	amd := byPlatform["linux/amd64"]
	tests := []struct {
		name      string
		opts      []remotecache.Option
		platforms []string
		problems  []string
	}{
		{"the image Image chose", []remotecache.Option{remotecache.WithPlatform(arm)}, []string{"linux/arm64/v8"}, nil},
		{"the default platform, not warmed", nil, []string{"linux/amd64"},
			[]string{"manifest missing " + must(amd.Digest()).String() + " linux/amd64"}},
		{"a platform the index lacks", []remotecache.Option{remotecache.WithPlatform(v1.Platform{OS: "windows", Architecture: "amd64"})}, []string{},
			[]string{"platform missing " + fx.digest.String() + " windows/amd64"}},
		{"every platform", []remotecache.Option{remotecache.WithAllPlatforms()}, []string{"linux/amd64", "linux/arm64/v8", "linux/s390x"},
			[]string{"manifest missing " + must(amd.Digest()).String() + " linux/amd64", "manifest missing " + must(byPlatform["linux/s390x"].Digest()).String() + " linux/s390x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := remotecache.Check(t.Context(), []name.Reference{fx.ref}, s, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if got := rep.Images[0].Platforms; !slices.Equal(got, tc.platforms) {
				t.Errorf("Platforms = %q, want %q", got, tc.platforms)
			}
			if got := problems(rep); !slices.Equal(got, tc.problems) {
				t.Errorf("problems:\n got %q\nwant %q", got, tc.problems)
			}
		})
	}
}

// With WithAllPlatforms, Check leaves attestation manifests out as Warm
// does, and checks them with WithAttestations.
func TestCheck_Attestations(t *testing.T) {
	reg := newTestRegistry(t)
	a := reg.pushAttested(t, "test/attested:v1", 83)
	s, _ := openStore(t)
	if _, err := remotecache.Warm(t.Context(), a.ref, s, fast, remotecache.WithAllPlatforms()); err != nil {
		t.Fatal(err)
	}
	refs := []name.Reference{a.ref}
	rep, err := remotecache.Check(t.Context(), refs, s, remotecache.WithAllPlatforms())
	if err != nil || !rep.OK() {
		t.Fatalf("Check: %v, problems %q; want a whole image without its attestations", err, problems(rep))
	}
	rep, err = remotecache.Check(t.Context(), refs, s, remotecache.WithAllPlatforms(), remotecache.WithAttestations())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"manifest missing " + must(a.attests[0].Digest()).String() + " unknown/unknown",
		"manifest missing " + must(a.attests[1].Digest()).String() + " unknown/unknown",
	}
	if got := problems(rep); !slices.Equal(got, want) {
		t.Errorf("problems:\n got %q\nwant %q", got, want)
	}
	if _, err := remotecache.Warm(t.Context(), a.ref, s, fast, remotecache.WithAllPlatforms(), remotecache.WithAttestations()); err != nil {
		t.Fatal(err)
	}
	rep, err = remotecache.Check(t.Context(), refs, s, remotecache.WithAllPlatforms(), remotecache.WithAttestations())
	if err != nil || !rep.OK() {
		t.Errorf("Check after Warm WithAttestations: %v, problems %q", err, problems(rep))
	}
}

// A manifest that is whole but that no pull can use is reported invalid.
func TestCheck_InvalidManifest(t *testing.T) {
	s, _ := openStore(t)
	d := must(s.Put(t.Context(), strings.NewReader(`{"schemaVersion":1,"name":"x"}`)))
	ref := must(name.NewDigest("registry.invalid/x@" + d.String()))
	rep, err := remotecache.Check(t.Context(), []name.Reference{ref}, s)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := problems(rep), []string{"manifest invalid " + d.String() + " "}; !slices.Equal(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
}
