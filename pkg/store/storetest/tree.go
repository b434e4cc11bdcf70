package storetest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/store"
)

// tree is a snapshot of files: each path mapped to its type, size and
// modification time. Two snapshots differ if a file was created, removed or
// changed; a directory's mtime moves when an entry is added or removed.
type tree map[string]string

func describe(fi fs.FileInfo) string {
	size := fi.Size()
	if fi.IsDir() {
		size = 0 // directory sizes vary by file system; mtime shows changes
	}
	return fmt.Sprintf("%v size=%d mtime=%d", fi.Mode(), size, fi.ModTime().UnixNano())
}

// snapshot records the tree below root.
func snapshot(t *testing.T, root string) tree {
	t.Helper()
	m := tree{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		m[rel] = describe(fi)
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot of %s: %v", root, err)
	}
	return m
}

// snapshotBlobs records the tree below blobs/.
func snapshotBlobs(t *testing.T, s *store.Store) tree {
	t.Helper()
	return snapshot(t, s.Layout().Join(layout.BlobsDir))
}

// snapshotFiles records the given files, and "missing" for those absent.
func snapshotFiles(t *testing.T, paths []string) tree {
	t.Helper()
	m := tree{}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			m[p] = "missing"
		case err != nil:
			t.Fatal(err)
		default:
			m[p] = describe(fi)
		}
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

// assertUnchanged fails the test if the tree below root differs from before.
func assertUnchanged(t *testing.T, root string, before tree) {
	t.Helper()
	if d := before.diff(snapshot(t, root)); d != "" {
		t.Errorf("%s changed:\n%s", root, d)
	}
}
