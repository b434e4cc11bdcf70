package layoutfs_test

import (
	"os"
	"testing"
	"time"
)

// Environment variables that switch a re-executed test binary
// (testutil.StartChild) into a child role. childDirEnv names the layout
// the child works on; its presence is what makes a test act as the child.
const (
	childDirEnv  = "LAYERCACHE_LAYOUT_CHILD_DIR"
	childIDEnv   = "LAYERCACHE_LAYOUT_CHILD_ID"
	childSyncEnv = "LAYERCACHE_LAYOUT_CHILD_SYNC"
)

// setAge sets the modification time of path to age before now.
func setAge(t *testing.T, path string, age time.Duration) {
	t.Helper()
	when := time.Now().Add(-age)
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}
