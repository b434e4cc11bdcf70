package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// The harness re-executes its own binary for the work that must happen in
// another process, as Go's lockedfile tests do: the environment variable
// roleEnv names the role, and the arguments are the role's.
const roleEnv = "LAYERCACHE_BENCH_ROLE"

// runRole runs the child role and returns the exit code.
func runRole(role string, args []string) int {
	ctx := context.Background()
	err := waitBarrier()
	switch {
	case err != nil:
	case role == "registry":
		var latency time.Duration
		if latency, err = time.ParseDuration(arg(args, 0)); err == nil {
			err = registryRole(latency)
		}
	case role == "warm":
		err = warmRole(ctx, arg(args, 0), arg(args, 1))
	case role == "mirror":
		err = mirrorRole(arg(args, 0))
	case role == "hash":
		err = hashRole(args)
	case role == "ggcr-pull":
		err = ggcrPullRole(arg(args, 0), arg(args, 1))
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", role, err)
		return 1
	}
	return 0
}

func arg(args []string, i int) string {
	if i < len(args) {
		return args[i]
	}
	return ""
}

// warmRole warms ref into the store in dir, as `layercache warm` does.
func warmRole(ctx context.Context, dir, ref string) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	s, err := store.Open(dir)
	if err != nil {
		return err
	}
	_, err = remotecache.Warm(ctx, r, s)
	return err
}

// hashRole reads and hashes files, as the ideal verified read does: the
// baseline of peak RSS.
func hashRole(files []string) error {
	if len(files) == 0 {
		return errors.New("no files")
	}
	for _, f := range files {
		if _, err := hashFile(f, idealBufSize); err != nil {
			return err
		}
	}
	return nil
}

// ggcrPullRole reads every layer of ref, compressed, through ggcr's
// filesystem cache in dir, and checks what it read against the layer's
// digest: ggcr's cache does not, and processes sharing it may serve each
// other partial files.
func ggcrPullRole(dir, ref string) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	img, err := remote.Image(r)
	if err != nil {
		return err
	}
	layers, err := cache.Image(img, cache.NewFilesystemCache(dir)).Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		want, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: %w", want, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", want, err)
		}
		if got := sum(h); got != want {
			return fmt.Errorf("layer %s: read %d bytes hashing to %s (a partial or mixed file from ggcr's cache)", want, n, got)
		}
	}
	return nil
}

// roleCommand prepares a child process of the harness in role. The child
// is killed if the harness dies.
func roleCommand(ctx context.Context, role string, args ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(os.Environ(), roleEnv+"="+role)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

// runChildRSS runs a child in role through the rusage helper (see
// bench/rusage) and returns the child's peak RSS in bytes, from the
// ru_maxrss of its wait4.
func runChildRSS(ctx context.Context, rusage, role string, args ...string) (int64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, rusage, append([]string{self}, args...)...)
	cmd.Env = append(os.Environ(), roleEnv+"="+role)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout bytes.Buffer
	var stderr limitedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%s child: %w: %s", role, err, stderr.String())
	}
	kib, err := strconv.ParseInt(strings.TrimSpace(stdout.String()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s child: rusage printed %q: %w", role, stdout.String(), err)
	}
	return kib << 10, nil
}

// runChildrenAtOnce runs n children in role together. Each starts up,
// then waits on its stdin until all have started, so that they begin
// their work at the same instant rather than one process start apart. It
// returns how many children failed, and why.
func runChildrenAtOnce(ctx context.Context, n int, role string, args ...string) (int, error) {
	type child struct {
		cmd    *exec.Cmd
		start  io.WriteCloser
		stderr *limitedBuffer
	}
	var children []child
	defer func() {
		for _, c := range children {
			c.start.Close()
			c.cmd.Wait()
		}
	}()
	for range n {
		cmd, err := roleCommand(ctx, role, args...)
		if err != nil {
			return n, err
		}
		cmd.Env = append(cmd.Env, barrierEnv+"=1")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return n, err
		}
		stderr := &limitedBuffer{}
		cmd.Stdout, cmd.Stderr = os.Stderr, stderr
		if err := cmd.Start(); err != nil {
			return n, err
		}
		children = append(children, child{cmd, stdin, stderr})
	}
	for _, c := range children {
		if _, err := c.start.Write([]byte{'\n'}); err != nil {
			return n, err
		}
	}
	var errs []error
	for _, c := range children {
		if err := c.cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("%s child: %w: %s", role, err, strings.TrimSpace(c.stderr.String())))
		}
		c.start.Close()
	}
	children = nil
	return len(errs), errors.Join(errs...)
}

// barrierEnv makes a child wait for a byte on stdin before its work.
const barrierEnv = "LAYERCACHE_BENCH_BARRIER"

// waitBarrier blocks until the harness says go, if it asked to.
func waitBarrier() error {
	if os.Getenv(barrierEnv) == "" {
		return nil
	}
	var b [1]byte
	if _, err := os.Stdin.Read(b[:]); err != nil {
		return fmt.Errorf("waiting for the harness to say go: %w", err)
	}
	return nil
}

// limitedBuffer keeps the first KiB written to it: enough of a child's
// stderr to say why it failed.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 1024 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
