package regtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/gofrs/flock"
)

const (
	// modulePath is the module whose go.mod pins the registry's version.
	modulePath = "github.com/ocibuild/layercache/integration"
	// registryModule and registryPkg name what Build compiles. The version
	// comes from the tool directive in integration/go.mod.
	registryModule = "github.com/distribution/distribution/v3"
	registryPkg    = registryModule + "/cmd/registry"

	// BinEnv names an environment variable that, when set, holds the path of
	// a registry binary to use instead of building one.
	BinEnv = "LAYERCACHE_REGISTRY_BIN"
)

// built remembers the binary Build produced, so that the tests of one process
// stat the go.mod files once, not once per test. It is the package's only
// mutable state, a cache of a pure function of files on disk.
var built struct {
	sync.Mutex
	path string
}

// Build returns the path of a CNCF distribution registry binary, compiling it
// first if needed.
//
// The binary is built with `go build` from the integration module, so its
// version and those of its dependencies are the ones pinned in
// integration/go.mod and go.sum. It is kept across test runs under
// <os.UserCacheDir()>/layercache/registry/<version>-<key>/registry, where key
// hashes go.mod, go.sum and the Go version, so a dependency bump builds a new
// binary and never reuses a stale one. If the environment variable named by
// BinEnv is set, Build returns its value instead, once it checked the file
// exists.
//
// The first build takes a minute or two on two cores; later calls return at
// once. Build is safe for concurrent use by goroutines and by processes (such
// as the test binaries of `go test ./...`): a lock file makes one process
// build while the others wait, and the binary appears at its final name only
// by rename, so a crash never leaves half a binary there.
//
// Build locates the integration module from this source file's path, or else
// by walking up from the working directory. It uses the `go` command found on
// PATH (`go test` puts its own first).
func Build(ctx context.Context) (string, error) {
	if bin := os.Getenv(BinEnv); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("%s: %w", BinEnv, err)
		}
		return bin, nil
	}

	built.Lock()
	defer built.Unlock()
	if built.path != "" {
		return built.path, nil
	}

	modDir, err := moduleDir()
	if err != nil {
		return "", err
	}
	dir, err := binDir(modDir)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "registry")
	if isExecutable(bin) {
		built.path = bin
		return bin, nil
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("registry build cache: %w", err)
	}
	lock := flock.New(filepath.Join(dir, "build.lock"))
	if _, err := lock.TryLockContext(ctx, 100*time.Millisecond); err != nil {
		return "", fmt.Errorf("locking registry build cache %s: %w", dir, err)
	}
	defer lock.Unlock() //nolint:errcheck // the kernel drops the lock when the file closes

	// Another process may have built it while we waited for the lock.
	if isExecutable(bin) {
		built.path = bin
		return bin, nil
	}

	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", fmt.Errorf("registry build cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "registry")

	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building the registry needs the go command: %w", err)
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, registryPkg)
	cmd.Dir = modDir
	// GOWORK=off: the versions must be integration/go.mod's even if someone
	// adds a go.work above it. CGO_ENABLED=0: a static binary that builds
	// without a C compiler.
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s in %s: %w\n%s", registryPkg, modDir, err, msg)
	}
	// A file at the final name is a whole binary: it gets there only by rename.
	if err := os.Rename(out, bin); err != nil {
		return "", fmt.Errorf("registry build cache: %w", err)
	}
	built.path = bin
	return bin, nil
}

// binDir is the cache directory of the registry binary that modDir's go.mod
// and go.sum describe.
func binDir(modDir string) (string, error) {
	gomod, err := os.ReadFile(filepath.Join(modDir, "go.mod"))
	if err != nil {
		return "", err
	}
	gosum, err := os.ReadFile(filepath.Join(modDir, "go.sum"))
	if err != nil {
		return "", err
	}
	version := requiredVersion(gomod, registryModule)
	if version == "" {
		return "", fmt.Errorf("%s/go.mod does not require %s", modDir, registryModule)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	h.Write(gomod)
	h.Write(gosum)
	key := hex.EncodeToString(h.Sum(nil))[:12]

	root, err := os.UserCacheDir()
	if err != nil {
		root = os.TempDir()
	}
	return filepath.Join(root, "layercache", "registry", version+"-"+key), nil
}

// requiredVersion returns the version of module mod in a go.mod file, or "".
// It reads both `require mod v` and lines inside a require block.
func requiredVersion(gomod []byte, mod string) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && f[0] == "require" {
			f = f[1:]
		}
		if len(f) >= 2 && f[0] == mod {
			return f[1]
		}
	}
	return ""
}

// moduleDir finds the root of the integration module.
func moduleDir() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		dir := filepath.Dir(filepath.Dir(file))
		if isModule(dir) {
			return dir, nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isModule(dir) {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod of module %s above %s", modulePath, wd)
		}
	}
}

// isModule reports whether dir holds the go.mod of the integration module.
func isModule(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == modulePath
		}
	}
	return false
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
