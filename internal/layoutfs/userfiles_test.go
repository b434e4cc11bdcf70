package layoutfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
)

// Tests of the rule "layercache never deletes a file it did not create":
// a folder of someone's files is never adopted as a cache, and a sweep of
// ingest/ removes only the temp and lock files layercache names.

// userFolder fills dir with the folder of issue 12: ingest/ holding a
// customers.csv and a batch/ subfolder with a file in it, all two days old.
func userFolder(t *testing.T, dir string) {
	t.Helper()
	ingest := filepath.Join(dir, layoutfs.IngestDir)
	testutil.WriteFile(t, filepath.Join(ingest, "customers.csv"), "id,name\n1,Ada\n")
	testutil.WriteFile(t, filepath.Join(ingest, "batch", "part-0001.csv"), "1\n")
	for _, rel := range []string{"customers.csv", filepath.Join("batch", "part-0001.csv"), "batch"} {
		setAge(t, filepath.Join(ingest, rel), 48*time.Hour)
	}
}

// TestCreate_RefusesFolderOfUserFiles: a folder without oci-layout whose
// entries merely have a layout's names (ingest/, blobs/, index.json, the
// stats file) is someone else's. Create refuses it with ErrNotLayout and
// changes nothing in it.
func TestCreate_RefusesFolderOfUserFiles(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		{"ingest/ holding a user's file and subfolder", userFolder},
		{"a user's index.json alone", func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.IndexFile), `{"name":"my-app","version":"1.0.0"}`)
		}},
		{"a user's valid OCI index.json alone, which layercache did not write", func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.IndexFile), `{"schemaVersion":2,"manifests":[]}`)
		}},
		{"blobs/ holding a user's file", func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.BlobsDir, "photo.jpg"), "jpeg")
		}},
		{"blobs/ and ingest/ beside a user's index.json", func(t *testing.T, dir string) {
			for _, d := range []string{layoutfs.BlobsDir, layoutfs.IngestDir} {
				if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.IndexFile), `{"name":"my-app"}`)
		}},
		{"ingest/ holding a user's file named like a lock, with a bad digest", func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.IngestDir, "sha256-notes.lock"), "mine")
		}},
		{"a stats file alone (no oci-layout)", func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.StatsFile), `{"hits":1}`)
		}},
		{"an index.json.corrupt alone (no oci-layout)", func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.CorruptIndexFile), "garbage")
		}},
		{"ingest/ and blobs/ as files", func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.IngestDir), "a file")
			testutil.WriteFile(t, filepath.Join(dir, layoutfs.BlobsDir), "a file")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			before := testutil.Snapshot(t, dir)
			p, err := layoutfs.Create(dir)
			if !errors.Is(err, layoutfs.ErrNotLayout) {
				t.Errorf("Create: got (%q, %v), want ErrNotLayout", p, err)
			}
			testutil.AssertUnchanged(t, dir, before)
		})
	}
}

// TestCreate_FinishesOwnPartialLayout: what a Create of layercache leaves
// when it is killed before it writes oci-layout (empty blobs/ and ingest/,
// its own temp and lock files in ingest/, the empty index.json it writes)
// is recognised, and the next Create finishes the layout.
func TestCreate_FinishesOwnPartialLayout(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, p layoutfs.Path)
	}{
		{"blobs/ alone (killed between the two mkdirs)", func(t *testing.T, p layoutfs.Path) {
			rmAll(t, p.Join(layoutfs.IngestDir), p.Join(layoutfs.IndexFile))
		}},
		{"blobs/ and ingest/ (killed before index.json)", func(t *testing.T, p layoutfs.Path) {
			rmAll(t, p.Join(layoutfs.IndexFile))
		}},
		{"an index.json temp file in ingest/ (killed before the link)", func(t *testing.T, p layoutfs.Path) {
			rmAll(t, p.Join(layoutfs.IndexFile))
			createTemp(t, p, layoutfs.IndexFile+".*.tmp")
		}},
		{"index.json and an oci-layout temp file (killed before the rename)", func(t *testing.T, p layoutfs.Path) {
			createTemp(t, p, layoutfs.LayoutFile+".*.tmp")
		}},
		{"index.json and the index lock (no hard links: rename under the lock)", func(t *testing.T, p layoutfs.Path) {
			l, err := p.LockIndex(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			l.Unlock()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := layoutfs.Create(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			rmAll(t, p.Join(layoutfs.LayoutFile))
			tc.setup(t, p)
			if _, err := layoutfs.Create(p.String()); err != nil {
				t.Fatalf("Create of a partial layout: %v", err)
			}
			assertLayout(t, p)
		})
	}
}

// TestSweep_LeavesUserFiles: in ingest/, Sweep removes old temp files and
// unheld lock files named as layercache names them, and nothing else: not
// files of other names, not folders (whatever their name), not what a
// folder holds.
func TestSweep_LeavesUserFiles(t *testing.T) {
	p := newLayout(t)
	ingest := func(name string) string { return p.Join(layoutfs.IngestDir, name) }

	var ours []string
	for _, pattern := range []string{"blob-*", layoutfs.IndexFile + ".*.tmp", layoutfs.LayoutFile + ".*.tmp", layoutfs.StatsFile + ".*.tmp"} {
		ours = append(ours, filepath.Base(createTemp(t, p, pattern)))
	}
	l, err := p.LockBlob(t.Context(), digestB)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	ours = append(ours, lockName(digestB))

	theirs := map[string]string{ // name -> why it is not ours
		"customers.csv":          "a user's file",
		"notes.lock":             "a .lock name that is not a digest's",
		"sha256-abc.lock":        "a digest lock name with a bad digest",
		"md5-" + hex32 + ".lock": "a lock name with an algorithm layercache never uses",
		"data.tmp":               "a .tmp name with a prefix layercache never uses",
		"blob-.tmp":              "a temp prefix with nothing after it, which CreateTemp never makes",
		"index.json":             "a file named like a layout file, not a temp file",
	}
	for name := range theirs {
		testutil.WriteFile(t, ingest(name), "mine")
	}
	// Folders are never swept, not even one at a name of ours.
	dirs := []string{"batch", "blob-123.tmp", lockName(digestA)}
	for _, d := range dirs {
		testutil.WriteFile(t, filepath.Join(ingest(d), "part-0001.csv"), "mine")
		setAge(t, filepath.Join(ingest(d), "part-0001.csv"), 48*time.Hour)
	}
	for _, name := range append(append(ours, dirs...), keys(theirs)...) {
		setAge(t, ingest(name), 48*time.Hour)
	}
	before := testutil.Snapshot(t, p.Join(layoutfs.IngestDir))

	n, err := p.Sweep(t.Context(), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if n != len(ours) {
		t.Errorf("Sweep removed %d files, want %d (%q)", n, len(ours), ours)
	}
	for _, name := range ours {
		if testutil.Exists(t, ingest(name)) {
			t.Errorf("Sweep kept %s, an old file of layercache's", name)
		}
		delete(before, name)
	}
	// The removals changed ingest/'s mtime; everything else is as it was.
	delete(before, ".")
	after := testutil.Snapshot(t, p.Join(layoutfs.IngestDir))
	delete(after, ".")
	if d := before.Diff(after); d != "" {
		t.Errorf("Sweep changed what is not layercache's:\n%s", d)
	}
}

// hex32 is 32 hex digits, an md5 digest's length.
const hex32 = "0123456789abcdef0123456789abcdef"

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func rmAll(t *testing.T, paths ...string) {
	t.Helper()
	for _, path := range paths {
		if err := os.RemoveAll(path); err != nil {
			t.Fatal(err)
		}
	}
}

// createTemp makes a temp file in ingest/ with p.CreateTemp, as layercache
// does, and returns its path.
func createTemp(t *testing.T, p layoutfs.Path, pattern string) string {
	t.Helper()
	f, err := p.CreateTemp(pattern)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// TestRepairIndex_KeepsFolderContents: a folder at index.json is set aside
// as index.json.corrupt with what it holds, and a folder holding files at
// index.json.corrupt is not emptied to make room: the repair fails and
// says so.
func TestRepairIndex_KeepsFolderContents(t *testing.T) {
	p := newLayout(t)
	rmAll(t, p.Join(layoutfs.IndexFile))
	testutil.WriteFile(t, p.Join(layoutfs.IndexFile, "mine.txt"), "mine")
	if rebuilt, _, err := p.RepairIndex(t.Context()); err != nil || !rebuilt {
		t.Fatalf("RepairIndex of a folder at index.json: got (%v, %v), want (true, nil)", rebuilt, err)
	}
	if b, err := os.ReadFile(p.Join(layoutfs.CorruptIndexFile, "mine.txt")); err != nil || string(b) != "mine" {
		t.Errorf("%s/mine.txt: got (%q, %v), want the file the folder held", layoutfs.CorruptIndexFile, b, err)
	}

	testutil.WriteFile(t, p.Join(layoutfs.IndexFile), "garbage")
	before := testutil.Snapshot(t, p.Join(layoutfs.CorruptIndexFile))
	if rebuilt, _, err := p.RepairIndex(t.Context()); err == nil || rebuilt {
		t.Errorf("RepairIndex with a folder of files at %s: got (%v, %v), want an error", layoutfs.CorruptIndexFile, rebuilt, err)
	}
	testutil.AssertUnchanged(t, p.Join(layoutfs.CorruptIndexFile), before)
}
