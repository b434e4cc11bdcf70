package testutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Tree is a snapshot of files: each path mapped to its type, size and
// modification time. Two snapshots differ if a file was created, removed
// or changed; a directory's mtime moves when an entry is added to it or
// removed from it.
type Tree map[string]string

// Describe is how a snapshot records one file.
func Describe(fi fs.FileInfo) string {
	size := fi.Size()
	if fi.IsDir() {
		size = 0 // directory sizes vary by file system; mtime shows changes
	}
	return fmt.Sprintf("%v size=%d mtime=%d", fi.Mode(), size, fi.ModTime().UnixNano())
}

// Snapshot records the tree below root, by paths relative to root. A root
// that does not exist gives an empty tree.
func Snapshot(t testing.TB, root string) Tree {
	t.Helper()
	m := Tree{}
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
		m[rel] = Describe(fi)
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot of %s: %v", root, err)
	}
	return m
}

// SnapshotFiles records the given files, and "missing" for those absent.
func SnapshotFiles(t testing.TB, paths []string) Tree {
	t.Helper()
	m := Tree{}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			m[p] = "missing"
		case err != nil:
			t.Fatal(err)
		default:
			m[p] = Describe(fi)
		}
	}
	return m
}

// Diff describes how after differs from before, one line a path, or
// returns "".
func (before Tree) Diff(after Tree) string {
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

// AssertUnchanged fails the test if the tree below root differs from
// before.
func AssertUnchanged(t testing.TB, root string, before Tree) {
	t.Helper()
	if d := before.Diff(Snapshot(t, root)); d != "" {
		t.Errorf("%s changed:\n%s", root, d)
	}
}
