package integration_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// Environment of a child of TestWarm_CrossProcess. childDirEnv switches
// the child role on.
const (
	childDirEnv = "LAYERCACHE_IT_CHILD_DIR" // the cache directory
	childRefEnv = "LAYERCACHE_IT_CHILD_REF" // the reference to warm
	childGoEnv  = "LAYERCACHE_IT_CHILD_GO"  // a file whose appearance starts the warm
)

const children = 4

// TestWarm_CrossProcess starts four processes that warm the same image
// into the same empty cache at the same moment. The per-digest locks must
// make the registry serve each blob once, in total, and every process must
// succeed.
func TestWarm_CrossProcess(t *testing.T) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		warmChild(t, dir, os.Getenv(childRefEnv), os.Getenv(childGoEnv))
		return
	}
	t.Parallel()
	reg := regtest.Start(t)
	p := regtest.NewProxy(t, reg.Addr)
	fx := pushImage(t, reg, p, "xproc/img:v1", 1<<20, 2<<20, 512<<10, 64<<10)
	// Slow blob responses keep each download in flight long enough for
	// the other processes to find its lock taken.
	p.Inject(regtest.Latency(100 * time.Millisecond).Only(regtest.IsBlobGet))
	dir := filepath.Join(t.TempDir(), "cache")
	goFile := filepath.Join(t.TempDir(), "go")

	type child struct {
		cmd *exec.Cmd
		out bytes.Buffer
	}
	var cs []*child
	for range children {
		c := &child{cmd: exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestWarm_CrossProcess$", "-test.count=1")}
		c.cmd.Env = append(os.Environ(),
			childDirEnv+"="+dir, childRefEnv+"="+fx.tag.String(), childGoEnv+"="+goFile)
		c.cmd.Stdout = &c.out
		c.cmd.Stderr = &c.out
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	// All four are started; let them go at once.
	check(t, os.WriteFile(goFile, nil, 0o644))

	n := int64(len(fx.want.layers))
	blobs := int(n) + 2 // manifest, config, layers
	var fetched int
	for i, c := range cs {
		err := c.cmd.Wait()
		if err != nil {
			t.Errorf("child %d: %v\n%s", i, err, c.out.String())
			continue
		}
		var rep remotecache.Report
		if err := json.Unmarshal(lastLine(c.out.Bytes()), &rep); err != nil {
			t.Errorf("child %d: no report (%v):\n%s", i, err, c.out.String())
			continue
		}
		t.Logf("child %d: fetched %+v, cached %+v", i, rep.Fetched, rep.Cached)
		// Every process accounts for the manifest, the config and each
		// layer, as fetched or as found in the cache.
		if got := rep.Fetched.Blobs + rep.Cached.Blobs; got != blobs {
			t.Errorf("child %d: report counts %d blobs, want %d", i, got, blobs)
		}
		fetched += rep.Fetched.Blobs
	}
	if t.Failed() {
		t.FailNow()
	}

	// Each layer and the config once, whichever process fetched it, and
	// the manifest by digest once too.
	assertStats(t, "four warms", p.Stats(), regtest.Stats{BlobGets: n + 1, BlobBytes: fx.blobBytes, ManifestGets: 1, BlobUploads: 0, Mounts: 0})
	// What one process fetched, the others found.
	if fetched != blobs {
		t.Errorf("reports: %d blobs fetched in all, want %d", fetched, blobs)
	}

	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	assertHolds(t, s, fx.blobs(t)...)
	assertStoreSound(t, s)
	desc, err := s.Resolve(t.Context(), fx.tag.Name())
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != fx.want.digest.String() {
		t.Errorf("index.json: %s at %s, want %s", fx.tag.Name(), desc.Digest, fx.want.digest)
	}
}

// warmChild is the child role: wait for the go file, warm ref into dir,
// and print the report as the last line of stdout.
func warmChild(t *testing.T, dir, ref, goFile string) {
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(goFile); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the parent never said go")
		}
		time.Sleep(5 * time.Millisecond)
	}
	rep, err := remotecache.Warm(t.Context(), parseRef(t, ref), s, cacheOptions(t)...)
	if err != nil {
		t.Fatalf("Warm: %v", err)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("\n%s\n", b)
}

// lastLine returns the last non-empty line of out that looks like JSON.
func lastLine(out []byte) []byte {
	lines := bytes.Split(out, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		if l := bytes.TrimSpace(lines[i]); len(l) > 0 && l[0] == '{' {
			return l
		}
	}
	return nil
}
