package layoutfs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
)

// TestCreate_ConcurrentRefsKept is the regression test of two bugs the
// torture suite found with processes that create one cache at once: one
// that wrote its empty index.json after another had created the cache and
// recorded a ref replaced that ref (a lost update); and one that found no
// oci-layout, then found the oci-layout another had written meanwhile,
// refused the directory as not a layout. Here goroutines create the same
// cache at once and each records a ref right away: every Create succeeds,
// and every ref is in index.json at the end.
func TestCreate_ConcurrentRefsKept(t *testing.T) {
	const creators = 8
	for round := range 20 {
		dir := filepath.Join(t.TempDir(), "cache")
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, creators)
		for i := range creators {
			wg.Go(func() {
				<-start
				p, err := layoutfs.Create(dir)
				if err == nil {
					err = p.UpdateIndex(t.Context(), func(idx *ocispec.Index) error {
						idx.Manifests = append(idx.Manifests, fzRef(fmt.Sprintf("creator-%d", i)))
						return nil
					})
				}
				errs <- err
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		idx, err := layoutfs.Path(dir).ReadIndex()
		if err != nil {
			t.Fatal(err)
		}
		if len(idx.Manifests) != creators {
			var names []string
			for _, m := range idx.Manifests {
				names = append(names, m.Annotations[ocispec.AnnotationRefName])
			}
			t.Fatalf("round %d: index.json holds %d refs %q, want %d: a creator replaced index.json after another recorded its ref",
				round, len(idx.Manifests), names, creators)
		}
	}
}

func fzRef(name string) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType:   ocispec.MediaTypeImageManifest,
		Digest:      digest.Digest("sha256:" + fmt.Sprintf("%064x", len(name))),
		Size:        1,
		Annotations: map[string]string{ocispec.AnnotationRefName: name},
	}
}

// TestCreate_Processes: OS processes (this test binary, re-executed) and
// the parent create the same fresh caches at once, one after another, and
// each records a ref in each right away. Whatever one process sees of a
// cache that another is creating, Create accepts it (no ErrNotLayout), and
// every ref is kept.
func TestCreate_Processes(t *testing.T) {
	const rounds = 20
	if base := os.Getenv(childDirEnv); base != "" {
		id := os.Getenv(childIDEnv)
		testutil.ChildBarrier(t, os.Getenv(childSyncEnv), id)
		createRounds(t, base, id, rounds)
		return
	}
	base := t.TempDir()
	syncDir := t.TempDir()
	ids := []string{"p0", "p1", "p2"}
	var children []*testutil.Child
	for _, id := range ids {
		children = append(children, testutil.StartChild(t, t.Name(),
			childDirEnv+"="+base, childIDEnv+"="+id, childSyncEnv+"="+syncDir))
	}
	testutil.ReleaseChildren(t, syncDir, ids)
	createRounds(t, base, "parent", rounds)
	for _, c := range children {
		c.Wait(t)
	}
	for r := range rounds {
		p := layoutfs.Path(filepath.Join(base, strconv.Itoa(r)))
		assertRefs(t, p, append(slices.Clone(ids), "parent"))
	}
}

// createRounds creates the caches base/0 ... base/rounds-1 in turn and
// records a ref named id in each.
func createRounds(t *testing.T, base, id string, rounds int) {
	t.Helper()
	for r := range rounds {
		p, err := layoutfs.Create(filepath.Join(base, strconv.Itoa(r)))
		if err != nil {
			t.Fatalf("%s: round %d: Create: %v", id, r, err)
		}
		addRef(t, p, id)
	}
}
