package torture_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// fastBackoff makes ggcr retry 10 ms apart, so that faults fail fast.
var fastBackoff = remote.Backoff{Duration: 10 * time.Millisecond, Factor: 1, Steps: 3}

// world is a registry with a counting, fault-injecting proxy in front and
// the images pushed to it.
type world struct {
	reg    *regtest.Registry
	proxy  *regtest.Proxy
	images []*image
}

// image is an image pushed to the registry, named through the proxy.
type image struct {
	img    v1.Image
	ref    name.Reference
	digest digest.Digest
	size   int64
	blobs  []digest.Digest // manifest, config, layers
	bytes  int64           // config and layers: what a cold pull downloads as blobs
	layers []int64         // the sizes of the layers
}

// spec is the image as tortured's flags take it.
func (i *image) spec() string { return fmt.Sprintf("%s|%s|%d", i.ref, i.digest, i.size) }

// newWorld starts a registry and a proxy and pushes one random image per
// entry of images, each with layers of the given sizes.
func newWorld(t *testing.T, images ...[]int64) *world {
	t.Helper()
	w := &world{reg: regtest.Start(t)}
	w.proxy = regtest.NewProxy(t, w.reg.Addr)
	for i, sizes := range images {
		repoTag := fmt.Sprintf("torture/img%d:v1", i)
		img := regtest.PushImage(t, w.reg.Addr+"/"+repoTag, sizes...)
		raw, err := img.RawManifest()
		check(t, err)
		m, err := img.Manifest()
		check(t, err)
		im := &image{img: img, digest: digest.FromBytes(raw), size: int64(len(raw))}
		im.ref, err = name.ParseReference(w.proxy.Addr+"/"+repoTag, name.Insecure)
		check(t, err)
		im.blobs = append(im.blobs, im.digest, digest.Digest(m.Config.Digest.String()))
		im.bytes = m.Config.Size
		for _, l := range m.Layers {
			im.blobs = append(im.blobs, digest.Digest(l.Digest.String()))
			im.bytes += l.Size
			im.layers = append(im.layers, l.Size)
		}
		w.images = append(w.images, im)
	}
	return w
}

// cacheOptions are remotecache options for pulls by the test itself.
func cacheOptions(t *testing.T, extra ...remotecache.Option) []remotecache.Option {
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return append([]remotecache.Option{
		remotecache.WithContext(t.Context()),
		remotecache.WithTransport(tr),
		remotecache.WithRemote(remote.WithRetryBackoff(fastBackoff)),
	}, extra...)
}

// warm warms img into the cache at dir, in this process.
func warm(t *testing.T, dir string, img *image) {
	t.Helper()
	s, err := store.Open(dir)
	check(t, err)
	if _, err := remotecache.Warm(t.Context(), img.ref, s, cacheOptions(t)...); err != nil {
		t.Fatalf("warm %s: %v", img.ref, err)
	}
}

func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// run is one run of tortured.
type run struct {
	res    torture.Result
	killed bool   // it died of SIGKILL
	killAt string // the step it said it was killed at
	err    error  // it failed otherwise (exit status, no result)
	stderr string
}

// runHelper runs tortured with args; killAt, if set, goes into
// LAYERCACHE_KILL_AT. attr, if set, is its SysProcAttr.
func runHelper(ctx context.Context, t testing.TB, killAt string, attr *syscall.SysProcAttr, args ...string) run {
	t.Helper()
	tortured, _ := helpers(t)
	cmd := exec.CommandContext(ctx, tortured, args...)
	cmd.Env = append(os.Environ(), "LAYERCACHE_KILL_AT="+killAt)
	cmd.SysProcAttr = attr
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := run{stderr: stderr.String()}
	if i := strings.Index(r.stderr, "faultpoint: SIGKILL at "); i >= 0 {
		rest := r.stderr[i+len("faultpoint: SIGKILL at "):]
		r.killAt, _, _ = strings.Cut(rest, " ")
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.killed = true
			return r
		}
	}
	if err != nil {
		r.err = fmt.Errorf("tortured %s: %v\nstderr:\n%s", strings.Join(args, " "), err, tail(r.stderr))
		return r
	}
	line := lastJSONLine(stdout.Bytes())
	if err := json.Unmarshal(line, &r.res); err != nil {
		r.err = fmt.Errorf("tortured %s: no result (%v)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, tail(stdout.String()), tail(r.stderr))
	}
	return r
}

func lastJSONLine(out []byte) []byte {
	lines := bytes.Split(out, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		if l := bytes.TrimSpace(lines[i]); len(l) > 0 && l[0] == '{' {
			return l
		}
	}
	return nil
}

func tail(s string) string {
	if len(s) > 4096 {
		return "..." + s[len(s)-4096:]
	}
	return s
}

// cacheState is what a fresh open of a cache found.
type cacheState struct {
	blobs map[digest.Digest]int64 // verified blobs and their sizes
	refs  map[string]digest.Digest
	index []digest.Digest // every entry of index.json, named or not
}

// inspect opens the cache at dir as a fresh process would and checks the
// invariants that must hold whatever happened to the process that used it
// last: it opens; index.json parses; every blob present verifies; every
// entry of index.json resolves to a stored blob or is reported missing
// cleanly (ErrNotFound); the index and stats locks and the per-digest
// locks of lockable are free. It returns what it found and a description
// of each invariant broken.
func inspect(t testing.TB, dir string, lockable ...digest.Digest) (cacheState, []string) {
	t.Helper()
	var bad []string
	badf := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	st := cacheState{blobs: map[digest.Digest]int64{}, refs: map[string]digest.Digest{}}
	// Before Open, which would repair it: a kill must never leave an
	// index.json that does not parse.
	if _, err := layoutfs.Path(dir).ReadIndex(); err != nil {
		badf("index.json does not parse after the kill: %v", err)
	}
	s, err := store.Open(dir)
	if err != nil {
		badf("fresh open: %v", err)
		return st, bad
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = s.Walk(ctx, func(i store.Info) error {
		info, err := s.Stat(ctx, i.Digest, store.VerifyFirst)
		switch {
		case err == nil:
			st.blobs[i.Digest] = info.Size
		case errors.Is(err, store.ErrNotFound):
		default:
			badf("blob %s does not verify: %v", i.Digest, err)
		}
		return nil
	})
	if err != nil {
		badf("walk: %v", err)
	}
	idx, err := layoutfs.Path(s.Dir()).ReadIndex()
	if err != nil {
		badf("index.json: %v", err)
	}
	for _, m := range idx.Manifests {
		st.index = append(st.index, m.Digest)
		if n := m.Annotations[ocispec.AnnotationRefName]; n != "" {
			st.refs[n] = m.Digest
			got, err := s.Resolve(ctx, n)
			if err != nil || got.Digest != m.Digest {
				badf("ref %s does not resolve to %s: %v", n, m.Digest, err)
			}
		}
		if _, err := s.Stat(ctx, m.Digest); err != nil && !errors.Is(err, store.ErrNotFound) {
			badf("ref %s (%s): not reported cleanly: %v", m.Annotations[ocispec.AnnotationRefName], m.Digest, err)
		}
	}
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	if l, err := layoutfs.Path(s.Dir()).LockIndex(lctx); err != nil {
		badf("the index lock is not free: %v", err)
	} else {
		l.Unlock()
	}
	if err := s.AddStats(lctx, store.Stats{}); err != nil {
		badf("the stats lock is not free: %v", err)
	}
	for _, d := range lockable {
		unlock, err := s.LockBlob(lctx, d)
		if err != nil {
			badf("the lock of %s is not free: %v", d, err)
		}
		if unlock != nil {
			unlock()
		}
	}
	return st, bad
}

// copyDir copies the tree at src to dst, keeping modes and times.
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.MkdirAll(target, fi.Mode().Perm()); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := os.WriteFile(target, b, fi.Mode().Perm()); err != nil {
				return err
			}
			if err := os.Chmod(target, fi.Mode().Perm()); err != nil {
				return err
			}
		default:
			return nil
		}
		return os.Chtimes(target, fi.ModTime(), fi.ModTime())
	})
	check(t, err)
}

// snapshot describes every entry below dir: type, size, content hash and
// modification time, by relative path.
func snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		desc := fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			desc += " " + hex.EncodeToString(sum[:8])
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(path)
			desc += " -> " + target
		}
		out[rel] = desc
		return nil
	})
	check(t, err)
	return out
}

// diffSnapshots describes how after differs from before, or returns "".
func diffSnapshots(before, after map[string]string) string {
	var d []string
	for k, v := range before {
		if w, ok := after[k]; !ok {
			d = append(d, "removed "+k)
		} else if w != v {
			d = append(d, fmt.Sprintf("changed %s: %s -> %s", k, v, w))
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			d = append(d, "added "+k)
		}
	}
	sort.Strings(d)
	return strings.Join(d, "; ")
}

// readAll reads r to its end.
func readAll(r io.Reader) []byte {
	b, _ := io.ReadAll(r)
	return b
}

// ocispecDescriptor is the OCI descriptor type, named here once.
type ocispecDescriptor = ocispec.Descriptor

// parseRefTB parses a reference or fails tb.
func parseRefTB(tb testing.TB, s string) name.Reference {
	tb.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		tb.Fatalf("reference %q: %v", s, err)
	}
	return r
}

// pullAll pulls ref through s and reads it in full (manifest, config,
// every layer compressed and uncompressed), hashing everything itself. It
// returns the digests of what it read, the bytes served without an error
// that were not what the manifest names, and the first error.
func pullAll(ctx context.Context, t *testing.T, s *store.Store, ref name.Reference) (map[string]bool, []string, error) {
	got := map[string]bool{}
	var bad []string
	ri, err := remotecache.Image(ref, s, cacheOptions(t, remotecache.WithContext(ctx))...)
	if err != nil {
		return got, nil, err
	}
	raw, err := ri.RawManifest()
	if err != nil {
		return got, nil, err
	}
	d, _ := ri.Digest()
	if digest.FromBytes(raw).String() != d.String() {
		bad = append(bad, fmt.Sprintf("manifest hashes to %s, its digest says %s", digest.FromBytes(raw), d))
	}
	got[digest.FromBytes(raw).String()] = true
	m, err := ri.Manifest()
	if err != nil {
		return got, bad, err
	}
	cfg, err := ri.RawConfigFile()
	if err != nil {
		return got, bad, err
	}
	if digest.FromBytes(cfg).String() != m.Config.Digest.String() {
		bad = append(bad, fmt.Sprintf("config hashes to %s, want %s", digest.FromBytes(cfg), m.Config.Digest))
	}
	got[digest.FromBytes(cfg).String()] = true
	layers, err := ri.Layers()
	if err != nil {
		return got, bad, err
	}
	for i, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return got, bad, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return got, bad, err
		}
		if digest.FromBytes(b).String() != m.Layers[i].Digest.String() {
			bad = append(bad, fmt.Sprintf("layer %d hashes to %s, want %s", i, digest.FromBytes(b), m.Layers[i].Digest))
		}
		got[digest.FromBytes(b).String()] = true
		rc, err = l.Uncompressed()
		if err != nil {
			return got, bad, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return got, bad, err
		}
	}
	return got, bad, nil
}
