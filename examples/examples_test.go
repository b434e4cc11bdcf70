package examples_test

import (
	"archive/tar"
	"bytes"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/examples/internal/localregistry"
)

// baseLayerBytes is a lower bound on the bytes of the synthetic base's
// layers: their files are random, so gzip cannot shrink them.
var baseLayerBytes = func() int64 {
	var n int64
	for _, s := range localregistry.BaseLayerSizes {
		n += int64(s)
	}
	return n
}()

func TestAppend(t *testing.T) {
	skipIfShort(t)
	t.Parallel()
	work := t.TempDir()
	cache, out := filepath.Join(work, "cache"), filepath.Join(work, "out")
	dir := filepath.Join(work, "site")
	writeTree(t, dir, map[string]string{
		"index.html":      "<h1>hello</h1>\n",
		"css/site.css":    "h1 { color: teal }\n",
		"empty/.keep":     "",
		"latest.html@":    "index.html", // a symlink
		"docs/a/b/c.txt":  "deep\n",
		"docs/a/b/d.json": "{}\n",
	})

	cold := runExample(t, "./append", "-serve", "-cache", cache, "-dir", dir, "-layout", out)
	warm := runExample(t, "./append", "-serve", "-cache", cache, "-dir", dir, "-layout", out)
	checkColdWarm(t, cold, warm)

	img := layoutImage(t, out, warm.digest)
	files := lastLayerFiles(t, img)
	for _, want := range []string{"index.html", "css/", "css/site.css", "empty/.keep", "docs/a/b/c.txt"} {
		if _, ok := files[want]; !ok {
			t.Errorf("layer has no %s; it has %v", want, slices.Sorted(maps.Keys(files)))
		}
	}
	if h := files["latest.html"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "index.html" {
		t.Errorf("latest.html: got %+v, want a symlink to index.html", h)
	}
	for name, h := range files {
		if !h.ModTime.Equal(time.Unix(0, 0)) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v, uid %d, gid %d; want the epoch and root", name, h.ModTime, h.Uid, h.Gid)
		}
	}

	// With no -dir, the sample built into the example is appended; the
	// cache is warm, so again no base blob comes from the registry.
	sample := runExample(t, "./append", "-serve", "-cache", cache)
	if sample.fromRegistry != 0 {
		t.Errorf("sample run: %d base bytes from the registry, want 0", sample.fromRegistry)
	}
}

func TestKolike(t *testing.T) {
	skipIfShort(t)
	t.Parallel()
	work := t.TempDir()
	cache, out := filepath.Join(work, "cache"), filepath.Join(work, "out")

	cold := runExample(t, "./kolike", "-serve", "-cache", cache, "-layout", out)
	warm := runExample(t, "./kolike", "-serve", "-cache", cache, "-layout", out)
	checkColdWarm(t, cold, warm)

	img := layoutImage(t, out, warm.digest)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/ko-app/hello"}; !slices.Equal(cf.Config.Entrypoint, want) {
		t.Errorf("entrypoint: got %q, want %q", cf.Config.Entrypoint, want)
	}
	files := lastLayerFiles(t, img)
	h := files["ko-app/hello"]
	if h == nil || h.Typeflag != tar.TypeReg || h.Mode != 0o755 {
		t.Fatalf("ko-app/hello: got %+v, want an executable regular file", h)
	}
	// The base is linux/amd64, so the binary runs here if this is too.
	if runtime.GOOS == "linux" && runtime.GOARCH == "amd64" {
		bin := filepath.Join(work, "hello")
		if err := os.WriteFile(bin, h.contents, 0o755); err != nil {
			t.Fatal(err)
		}
		got, err := exec.Command(bin).Output()
		if err != nil {
			t.Fatalf("running the image's binary: %v", err)
		}
		if !strings.HasPrefix(string(got), "Hello from a ko-like image") {
			t.Errorf("the image's binary printed %q", got)
		}
	}
}

// skipIfShort skips under -short: the tests build the examples with
// `go run`, and kolike runs `go build -trimpath` for linux, which takes
// about 100 s on an empty build cache (about 3 s once it is warm).
func skipIfShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the examples and a Go program: ~100 s on a cold build cache")
	}
}

// run is what one run of an example reported.
type run struct {
	digest       string // from the reference printed on stdout
	fromRegistry int64  // "base blobs from registry: N bytes"
	fromCache    int64  // "from cache: M bytes"
}

var (
	registryLine = regexp.MustCompile(`(?m)^base blobs from registry: (\d+) bytes`)
	cacheLine    = regexp.MustCompile(`(?m)^from cache: (\d+) bytes`)
)

// runExample runs `go run pkg args...` in this directory and parses its
// report. The output goes to the test log either way.
func runExample(t *testing.T, pkg string, args ...string) run {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "go", append([]string{"run", pkg}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("go run %s %s (%s)\nstdout:\n%sstderr:\n%s", pkg, strings.Join(args, " "),
		time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	if err != nil {
		t.Fatalf("go run %s: %v", pkg, err)
	}
	var r run
	ref := strings.TrimSpace(stdout.String())
	if i := strings.LastIndex(ref, "@"); i >= 0 && !strings.Contains(ref, "\n") {
		r.digest = ref[i+1:]
	} else {
		t.Fatalf("stdout: got %q, want one REPO@DIGEST line", ref)
	}
	r.fromRegistry = parseCount(t, registryLine, stderr.String())
	r.fromCache = parseCount(t, cacheLine, stderr.String())
	return r
}

func parseCount(t *testing.T, re *regexp.Regexp, s string) int64 {
	t.Helper()
	m := re.FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("stderr has no line matching %q", re)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkColdWarm checks the contract of two runs on one cache: the first
// downloads the base, the second downloads none of it and reads it from
// the cache, and both build the same image.
func checkColdWarm(t *testing.T, cold, warm run) {
	t.Helper()
	if cold.fromRegistry < baseLayerBytes {
		t.Errorf("cold run: %d base bytes from the registry, want at least the %d of the base's layers", cold.fromRegistry, baseLayerBytes)
	}
	if warm.fromRegistry != 0 {
		t.Errorf("warm run: %d base bytes from the registry, want 0", warm.fromRegistry)
	}
	if warm.fromCache < baseLayerBytes {
		t.Errorf("warm run: %d bytes from the cache, want at least %d", warm.fromCache, baseLayerBytes)
	}
	if cold.digest != warm.digest {
		t.Errorf("image digest changed between runs: %s, then %s", cold.digest, warm.digest)
	}
}

// layoutImage opens the OCI layout in dir as ggcr does, checks that it
// holds one image (a second run replaces the first's entry) and that it
// is the one pushed, and validates it (which reads every blob).
func layoutImage(t *testing.T, dir, digest string) v1.Image {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	ii, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("layout index has %d manifests, want 1", len(im.Manifests))
	}
	if got := im.Manifests[0].Digest.String(); got != digest {
		t.Fatalf("layout holds %s, want the pushed %s", got, digest)
	}
	img, err := ii.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	return img
}

// entry is a tar header with the file's bytes.
type entry struct {
	*tar.Header
	contents []byte
}

// lastLayerFiles returns the entries of img's last layer by their names
// in the tar (directories end in a slash).
func lastLayerFiles(t *testing.T, img v1.Image) map[string]*entry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[len(layers)-1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*entry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = &entry{Header: h, contents: b}
	}
}

// writeTree creates files under dir. A name ending in "@" is a symlink
// to its value.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(strings.TrimSuffix(name, "@")))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(name, "@") {
			if err := os.Symlink(content, path); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
