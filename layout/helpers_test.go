package layout_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// Environment variables that switch a re-executed test binary into a child
// role, as Go's lockedfile tests do. childDirEnv names the layout the child
// works on; its presence is what makes a test act as the child.
const (
	childDirEnv  = "LAYERCACHE_LAYOUT_CHILD_DIR"
	childIDEnv   = "LAYERCACHE_LAYOUT_CHILD_ID"
	childSyncEnv = "LAYERCACHE_LAYOUT_CHILD_SYNC"
)

// child is a re-executed test binary running one test in a child role.
type child struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

// startChild re-executes the test binary to run only the test named test,
// with env added to the environment. The child is killed when the test
// ends if it is still running.
func startChild(t *testing.T, test string, env ...string) *child {
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
	c := &child{cmd: cmd, out: out}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	return c
}

// wait waits for the child and fails the test if it did not pass.
func (c *child) wait(t *testing.T) {
	t.Helper()
	if err := c.cmd.Wait(); err != nil {
		t.Errorf("child %v: %v\n%s", c.cmd.Args, err, c.out)
	}
}

// waitFile polls until path exists, and fails the test after timeout.
func waitFile(t *testing.T, path string, timeout time.Duration) {
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

// barrier is how children and parent start at the same instant: each child
// creates ready-<id> in dir and waits for dir/go, which the parent creates
// once every child is ready.
func childBarrier(t *testing.T, dir, id string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "ready-"+id), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(dir, "go"), time.Minute)
}

func releaseChildren(t *testing.T, dir string, ids []string) {
	t.Helper()
	for _, id := range ids {
		waitFile(t, filepath.Join(dir, "ready-"+id), time.Minute)
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// tree is a snapshot of a directory tree: each entry's relative path mapped
// to its type, size and modification time. Comparing two snapshots shows
// any file created, removed or changed (a directory's mtime moves when an
// entry is added to it or removed from it).
type tree map[string]string

func snapshot(t *testing.T, root string) tree {
	t.Helper()
	m := tree{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		size := fi.Size()
		if fi.IsDir() {
			size = 0 // directory sizes vary by file system; mtime shows changes
		}
		m[rel] = fmt.Sprintf("%v size=%d mtime=%d", fi.Mode(), size, fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot of %s: %v", root, err)
	}
	return m
}

// diff describes how after differs from before, or returns "".
func (before tree) diff(after tree) string {
	var lines []string
	for k, v := range before {
		switch w, ok := after[k]; {
		case !ok:
			lines = append(lines, "removed "+k)
		case w != v:
			lines = append(lines, fmt.Sprintf("changed %s: %s -> %s", k, v, w))
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			lines = append(lines, "created "+k)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// assertUnchanged fails the test if the tree at root differs from before.
func assertUnchanged(t *testing.T, root string, before tree) {
	t.Helper()
	if d := before.diff(snapshot(t, root)); d != "" {
		t.Errorf("%s changed:\n%s", root, d)
	}
}

// setAge sets the modification time of path to age before now.
func setAge(t *testing.T, path string, age time.Duration) {
	t.Helper()
	when := time.Now().Add(-age)
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}
