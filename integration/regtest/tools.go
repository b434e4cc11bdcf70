package regtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/gofrs/flock"
)

// A Tool is a command that the end-to-end tests run as a client and that
// BuildTool compiles from a module pinned in integration/go.mod (a `tool`
// directive there keeps the requirement through `go mod tidy`).
type Tool struct {
	// Name is the binary's file name.
	Name string
	// Module is the module whose version integration/go.mod pins.
	Module string
	// Pkg is the main package that is built.
	Pkg string
}

var (
	// Crane is ggcr's crane CLI, at the ggcr version the library uses.
	Crane = Tool{
		Name:   "crane",
		Module: "github.com/google/go-containerregistry",
		Pkg:    "github.com/google/go-containerregistry/cmd/crane",
	}
	// Conformance is the OCI distribution-spec conformance suite. Since
	// its 2025 rewrite it is a main package, built with `go build` (its
	// README; the old `go test -c` path still works but is deprecated).
	Conformance = Tool{
		Name:   "conformance",
		Module: "github.com/opencontainers/distribution-spec/conformance",
		Pkg:    "github.com/opencontainers/distribution-spec/conformance",
	}
)

// tools remembers the binaries BuildTool produced in this process, by name.
var tools struct {
	sync.Mutex
	path map[string]string
}

// BuildTool returns the path of tool's binary, compiling it first if needed,
// the way Build does the registry's: with `go build` from the integration
// module (so at the versions of integration/go.mod and go.sum, with
// GOWORK=off and CGO_ENABLED=0), kept across runs under
// <os.UserCacheDir()>/layercache/tools/<name>-<version>-<key>/<name>, where
// key hashes go.mod, go.sum and the Go version. A lock file makes one
// process build while the others wait; the binary reaches its final name
// only by rename.
func BuildTool(ctx context.Context, tool Tool) (string, error) {
	tools.Lock()
	defer tools.Unlock()
	if p := tools.path[tool.Name]; p != "" {
		return p, nil
	}
	modDir, err := moduleDir()
	if err != nil {
		return "", err
	}
	dir, err := toolDir(modDir, tool)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, tool.Name)
	if !isExecutable(bin) {
		if err := buildToolLocked(ctx, modDir, dir, bin, tool); err != nil {
			return "", err
		}
	}
	if tools.path == nil {
		tools.path = map[string]string{}
	}
	tools.path[tool.Name] = bin
	return bin, nil
}

func buildToolLocked(ctx context.Context, modDir, dir, bin string, tool Tool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%s build cache: %w", tool.Name, err)
	}
	lock := flock.New(filepath.Join(dir, "build.lock"))
	if _, err := lock.TryLockContext(ctx, 100*time.Millisecond); err != nil {
		return fmt.Errorf("locking %s build cache %s: %w", tool.Name, dir, err)
	}
	defer lock.Unlock() //nolint:errcheck // the kernel drops the lock when the file closes
	// Another process may have built it while we waited for the lock.
	if isExecutable(bin) {
		return nil
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return fmt.Errorf("%s build cache: %w", tool.Name, err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, tool.Name)
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("building %s needs the go command: %w", tool.Name, err)
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, tool.Pkg)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s in %s: %w\n%s", tool.Pkg, modDir, err, msg)
	}
	if err := os.Rename(out, bin); err != nil {
		return fmt.Errorf("%s build cache: %w", tool.Name, err)
	}
	return nil
}

// toolDir is the cache directory of tool's binary as modDir's go.mod and
// go.sum describe it.
func toolDir(modDir string, tool Tool) (string, error) {
	gomod, err := os.ReadFile(filepath.Join(modDir, "go.mod"))
	if err != nil {
		return "", err
	}
	gosum, err := os.ReadFile(filepath.Join(modDir, "go.sum"))
	if err != nil {
		return "", err
	}
	version := requiredVersion(gomod, tool.Module)
	if version == "" {
		return "", fmt.Errorf("%s/go.mod does not require %s", modDir, tool.Module)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s/%s\n%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, tool.Pkg)
	h.Write(gomod)
	h.Write(gosum)
	key := hex.EncodeToString(h.Sum(nil))[:12]
	root, err := os.UserCacheDir()
	if err != nil {
		root = os.TempDir()
	}
	return filepath.Join(root, "layercache", "tools", tool.Name+"-"+version+"-"+key), nil
}
