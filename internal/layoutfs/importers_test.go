package layoutfs_test

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestImporters holds the layers to one direction: only pkg/store writes a
// cache, so only it imports this package's plumbing (and fsutil's, beside
// layout and this package). cmd, remotecache and everything else reach
// the cache's files through pkg/store, and import package layout only for
// the format a reader needs (digest → path, recognition, index reading).
func TestImporters(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("go command not found, and CI=true: %v", err)
		}
		t.Skip("go command not found")
	}
	const mod = "github.com/ocibuild/layercache/"
	out, err := exec.Command(goTool, "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, mod+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowed := map[string][]string{
		mod + "internal/layoutfs": {mod + "pkg/store"},
		mod + "internal/fsutil":   {mod + "layout", mod + "internal/layoutfs", mod + "pkg/store"},
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, imports := fields[0], fields[1:]
		for _, imp := range imports {
			who, ok := allowed[imp]
			if !ok || slices.Contains(who, pkg) {
				continue
			}
			t.Errorf("%s imports %s; only %v may", pkg, imp, who)
		}
	}
}
