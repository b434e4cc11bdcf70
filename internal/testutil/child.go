package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Child is the test binary re-executed to run one test in a child role,
// as Go's lockedfile tests do: an environment variable the parent sets
// tells the test that it is the child.
type Child struct {
	Cmd *exec.Cmd
	Out *bytes.Buffer // the child's stdout and stderr
}

// StartChild re-executes the test binary to run only the test named test,
// with env added to the environment. The child is killed when the test
// ends if it is still running.
func StartChild(t testing.TB, test string, env ...string) *Child {
	t.Helper()
	// -test.timeout bounds an orphan if the parent dies without killing it.
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), env...)
	out := new(bytes.Buffer)
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting child: %v", err)
	}
	c := &Child{Cmd: cmd, Out: out}
	t.Cleanup(func() {
		if c.Cmd.ProcessState == nil {
			c.Cmd.Process.Kill()
			c.Cmd.Wait()
		}
	})
	return c
}

// Wait waits for the child and fails the test if it did not pass.
func (c *Child) Wait(t testing.TB) {
	t.Helper()
	if err := c.Cmd.Wait(); err != nil {
		t.Errorf("child %v: %v\n%s", c.Cmd.Args, err, c.Out)
	}
}

// WaitFor polls cond until it holds, and fails the test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitFile polls until path exists, and fails the test after timeout.
func WaitFile(t testing.TB, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %v", path, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ChildBarrier is how children and parent start at the same instant: each
// child creates ready-<id> in dir and waits for dir/go, which the parent
// creates with ReleaseChildren once every child is ready.
func ChildBarrier(t testing.TB, dir, id string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "ready-"+id), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	WaitFile(t, filepath.Join(dir, "go"), time.Minute)
}

// ReleaseChildren waits until every child in ids is at ChildBarrier, then
// lets them all go.
func ReleaseChildren(t testing.TB, dir string, ids []string) {
	t.Helper()
	for _, id := range ids {
		WaitFile(t, filepath.Join(dir, "ready-"+id), time.Minute)
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}
