// Kolike is a ko-like builder: it compiles a Go program, puts the binary
// in a layer at /ko-app/hello on top of a base image pulled through
// layercache, sets the entrypoint, and pushes the image. The first run
// downloads the base's blobs and keeps them in the cache; later runs read
// them from the cache, verified, and download none. Only the new layer is
// built each time.
//
// Run it with no network at all: -serve starts a registry inside the
// process, pushes a synthetic base of a few MiB to it, and pushes the
// result to a second in-process registry:
//
//	go run ./examples/kolike -serve
//	go run ./examples/kolike -serve -layout /tmp/hello
//
// Against real registries (credentials from ~/.docker/config.json, as
// with ko and crane):
//
//	go run ./examples/kolike -base cgr.dev/chainguard/static:latest -dst ghcr.io/you/hello:latest
//
// The program is a hello world written to a temporary module and built
// with CGO_ENABLED=0 GOOS=linux and the GOARCH of the base's config, as ko
// does. The build is reproducible (-trimpath, fixed file times in the
// layer), so the image digest is the same on every run with the same Go
// toolchain.
//
// The cache lives where -cache says, or else where cachedir.Dir finds it:
// $OCIBUILD_CACHE_DIR, else <project root>/_build/ocibuild_cache.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ocibuild/layercache/examples/internal/scaffold"
	"github.com/ocibuild/layercache/pkg/cachedir"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// appPath is where the binary goes in the image, as ko puts it.
const appPath = "/ko-app/hello"

// The program kolike builds: a module of its own, so that the build needs
// nothing from the module it is run in.
const (
	helloGoMod  = "module example.com/hello\n\ngo 1.22\n"
	helloMainGo = `package main

import "fmt"

func main() {
	fmt.Println("Hello from a ko-like image built on a cached base.")
}
`
)

// epoch is the modification time of every entry of the new layer.
var epoch = time.Unix(0, 0)

func main() { scaffold.Main("kolike", run) }

// run is the whole tool. The result, the pushed reference by digest, goes
// to stdout, as `ko build` prints it; the report goes to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("kolike", flag.ContinueOnError)
	flags.SetOutput(stderr)
	var (
		baseFlag  = flags.String("base", "", "base image `REF` (default with -serve: a synthetic base on an in-process registry)")
		dstFlag   = flags.String("dst", "", "push the image to `REF` (default with -serve: an in-process registry)")
		layoutDir = flags.String("layout", "", "also write the image to the OCI image layout in `DIR`")
		cacheDir  = flags.String("cache", "", "layer cache `DIR` (default: cachedir.Dir(), e.g. <project>/_build/ocibuild_cache)")
		serve     = flags.Bool("serve", false, "run in-process registries for what -base and -dst leave out: no network needed")
	)
	if err := scaffold.Parse(flags, args); err != nil {
		return err
	}
	if !*serve && (*baseFlag == "" || *dstFlag == "") {
		return scaffold.UsageError{Msg: "give -base REF and -dst REF, or -serve to use in-process registries for what is missing"}
	}
	start := time.Now()

	// 1. Open the cache.
	dir := *cacheDir
	if dir == "" {
		d, err := cachedir.Dir()
		if err != nil {
			return err
		}
		dir = d
	}
	s, err := store.Open(dir)
	if err != nil {
		return err
	}
	defer s.Close() // writes the pull counters it holds in memory (layercache stats)
	fmt.Fprintf(stderr, "cache: %s\n", s.Dir())

	baseRef, dstRef, cleanup, err := scaffold.Refs(ctx, *baseFlag, *dstFlag, "example/hello:latest", *serve, stderr)
	if err != nil {
		return err
	}
	defer cleanup()

	// 2. Pull the base through the cache. Only its manifest and config are
	// read here; the layers are read when the image is pushed.
	meter := scaffold.NewMeter(ctx, s)
	base, err := remotecache.Image(baseRef, s,
		remotecache.WithContext(ctx),
		remotecache.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		remotecache.WithKeychain(authn.DefaultKeychain),
		remotecache.WithTransport(meter.Transport),
	)
	if err != nil {
		return err
	}
	cf, err := base.ConfigFile()
	if err != nil {
		return err
	}

	// 3. Build the binary for the base's platform, and make a layer of it.
	bin, err := build(ctx, cf.Architecture, cf.Variant, stderr)
	if err != nil {
		return err
	}
	layerType := types.DockerLayer
	if mt, err := base.MediaType(); err != nil {
		return err
	} else if mt == types.OCIManifestSchema1 {
		layerType = types.OCILayer
	}
	layer, err := binaryLayer(bin, appPath, layerType)
	if err != nil {
		return err
	}

	// 4. Put it on the base and set the entrypoint.
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{CreatedBy: "kolike: go build -trimpath -o " + appPath, Created: v1.Time{Time: epoch}},
		MediaType: layerType,
	})
	if err != nil {
		return err
	}
	cfg := cf.Config
	cfg.Entrypoint = []string{appPath}
	cfg.Cmd = nil
	if img, err = mutate.Config(img, cfg); err != nil {
		return err
	}
	dig, err := img.Digest()
	if err != nil {
		return err
	}

	// 5. Push. remote.Write reads the base's layers only if dst lacks them
	// and cannot mount them: from the registry on a cold cache (storing
	// them as they stream by), from the cache after that.
	if err := remote.Write(dstRef, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("pushing %s: %w", dstRef, err)
	}
	fmt.Fprintf(stdout, "%s@%s\n", dstRef.Context(), dig)
	if *layoutDir != "" {
		if err := scaffold.WriteLayout(*layoutDir, img, dstRef.Identifier()); err != nil {
			return fmt.Errorf("writing the layout %s: %w", *layoutDir, err)
		}
		fmt.Fprintf(stderr, "layout: %s (ref %q)\n", *layoutDir, dstRef.Identifier())
	}

	// 6. Report what came from the registry and what from the cache.
	fmt.Fprintf(stderr, "digest: %s\n", dig)
	meter.Report(ctx, stderr, start)
	return nil
}

// build writes the hello-world module to a temporary directory and builds
// it for linux/goarch (and the ARM variant, if any), statically and
// reproducibly. It returns the binary's bytes.
func build(ctx context.Context, goarch, variant string, stderr io.Writer) ([]byte, error) {
	if goarch == "" {
		goarch = "amd64"
	}
	tmp, err := os.MkdirTemp("", "kolike-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "go.mod"), []byte(helloGoMod), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "main.go"), []byte(helloMainGo), 0o644); err != nil {
		return nil, err
	}
	out := filepath.Join(tmp, "hello")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOWORK=off")
	if goarch == "arm" && strings.HasPrefix(variant, "v") {
		cmd.Env = append(cmd.Env, "GOARM="+strings.TrimPrefix(variant, "v"))
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build (GOOS=linux GOARCH=%s): %w", goarch, err)
	}
	return os.ReadFile(out)
}

// binaryLayer returns a layer holding bin at path (absolute), mode 0755,
// with its parent directories, fixed times and root ownership.
func binaryLayer(bin []byte, path string, mt types.MediaType) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	rel := strings.TrimPrefix(path, "/")
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		dir := strings.Join(parts[:i], "/") + "/"
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(bin)), ModTime: epoch}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	tarBytes := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithMediaType(mt), tarball.WithCompressedCaching)
}
