package torture_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/integration/torture"
	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/pkg/store"
)

// The scenarios of this file plant files in a cache (or in a folder that
// is not one) and run the commands a user runs on it, each in a process
// of its own: the layercache command for warm, put, prune, clear, stats,
// verify, images and ls, and tortured for a pull through the library and
// for store.Get and store.Inspect. A process can be killed, so a command
// that blocks (on a FIFO, say) fails the scenario at hostileLimit instead
// of hanging the suite, and one that runs out of memory fails it without
// ending the suite.

// hostileLimit bounds each command. The commands here take well under a
// second; one still running after this long is blocked.
const hostileLimit = 2 * time.Minute

// maxRSS bounds the peak memory of each command. The commands here need
// less than 64 MiB, race-detector builds of tortured included; one that
// allocated a planted file of 1 TiB would die first, and one that read a
// large part of it into memory would be caught here.
const maxRSS = 512 << 20

// proc is the outcome of one command.
type proc struct {
	line           string // the command line, for messages
	code           int    // exit status; -1 if a signal ended it
	stdout, stderr string
	hung           bool  // killed at hostileLimit
	rss            int64 // its peak resident memory, in bytes
}

// runProc runs bin with args, bounded by hostileLimit. DOCKER_CONFIG
// points at an empty folder, so the layercache command pulls anonymously,
// as it does on a machine without credentials. A race-detector build of
// tortured sleeps a second before it exits, unless GORACE says not to.
func runProc(t *testing.T, bin string, args ...string) proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), hostileLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+t.TempDir(), "LAYERCACHE_KILL_AT=",
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	p := proc{line: filepath.Base(bin) + " " + strings.Join(args, " "), stdout: stdout.String(), stderr: stderr.String()}
	p.hung = ctx.Err() != nil && t.Context().Err() == nil
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		p.code = ee.ExitCode()
	default:
		t.Fatalf("%s: %v", p.line, err)
	}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			p.rss = ru.Maxrss << 10 // KiB on Linux
		}
	}
	return p
}

// problems describes what went wrong with a command that must finish in
// time and within maxRSS, with exit status 0, or 1 and a message holding
// one of clear (what the user can act on) on stderr or, for verify's
// report, stdout. With no clear, it must succeed. A tortured that
// succeeded must report no violation. It returns nil if all is well.
func (p proc) problems(clear ...string) []string {
	var bad []string
	switch {
	case p.hung:
		return []string{fmt.Sprintf("%s: still running after %v; killed", p.line, hostileLimit)}
	case p.code == 0:
	case p.code == 1 && len(clear) > 0 && containsAny(p.stderr+p.stdout, clear):
	case p.code == 1:
		bad = append(bad, fmt.Sprintf("%s: exit status 1 without an error naming %q: %s", p.line, clear, oneLine(p.stderr)))
	default:
		bad = append(bad, fmt.Sprintf("%s: exit status %d (a crash or a signal): %s", p.line, p.code, oneLine(p.stderr)))
	}
	if p.rss > maxRSS {
		bad = append(bad, fmt.Sprintf("%s: peak memory %d MiB, more than %d MiB", p.line, p.rss>>20, maxRSS>>20))
	}
	if p.code == 0 && strings.HasPrefix(p.line, "tortured ") {
		var res torture.Result
		if err := json.Unmarshal(lastJSONLine([]byte(p.stdout)), &res); err != nil {
			bad = append(bad, fmt.Sprintf("%s: no result: %v", p.line, err))
		}
		for _, v := range res.Violations {
			bad = append(bad, p.line+": "+v)
		}
	}
	return bad
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// oneLine shortens a command's stderr for a message.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 600 {
		s = s[:300] + " ... " + s[len(s)-300:]
	}
	return fmt.Sprintf("%q", s)
}

// hostileOp is a command run on a hostile cache.
type hostileOp struct {
	name string
	// cmd returns the program and its arguments for the cache at dir.
	cmd func(dir string) (string, []string)
}

// hostileOps are the commands of the hostile scenarios: warm, pull, put,
// prune, clear, stats and verify. put stores file.
func hostileOps(t *testing.T, img *image, file string) []hostileOp {
	tortured, cli := helpers(t)
	c := func(args ...string) func(string) (string, []string) {
		return func(dir string) (string, []string) { return cli, append(args, "--cache-dir", dir) }
	}
	return []hostileOp{
		{"warm", c("warm", "--insecure", img.ref.String())},
		{"pull", func(dir string) (string, []string) {
			return tortured, []string{"op", "-dir", dir, "-op", torture.OpPull, "-image", img.spec()}
		}},
		{"put", c("put", file)},
		{"prune", c("prune", "--max-size", "1")},
		{"clear", c("clear", "--yes")},
		{"stats", c("stats")},
		{"verify", c("verify")},
	}
}

// TestHostileLockFiles plants a FIFO, an empty folder, a folder of
// someone's files, and symlinks to outside the cache (to a file that does
// not exist, and to a folder of files) at each lock file: the index lock,
// the stats lock and a per-digest lock, of a layer the cache is missing.
// Then it runs each of warm, pull, put, prune, clear, stats and verify on
// a fresh copy. Each finishes, bounded; a FIFO, an empty folder or a
// symlink is replaced by a lock file and the command succeeds; a folder of
// files is left as it is, and a command that needs its lock fails with an
// error naming it. Nothing outside the cache changes: no symlink is
// followed.
func TestHostileLockFiles(t *testing.T) {
	w := newWorld(t, []int64{64 << 10, 32 << 10})
	img := w.images[0]
	missing := img.blobs[2]
	template := filepath.Join(t.TempDir(), "template")
	warm(t, template, img)
	// The tag is not recorded, so that warm and pull record it (under the
	// index lock); another ref is, so that prune and clear drop it (under
	// the index lock too). One layer is missing, so that warm and pull
	// fetch it under its lock. Both count what they did under the stats
	// lock.
	s, err := store.Open(template)
	check(t, err)
	check(t, s.Untag(t.Context(), img.ref.Name()))
	check(t, s.Tag(t.Context(), "torture/kept:1", descOf(img)))
	check(t, s.Delete(t.Context(), missing))
	file := filepath.Join(t.TempDir(), "put.bin")
	check(t, os.WriteFile(file, []byte("bytes to put beside a planted lock file"), 0o644))
	ops := hostileOps(t, img, file)

	locks := []lockName{
		{"index lock", "index.json.lock"},
		{"stats lock", layoutfs.StatsFile + ".lock"},
		{"blob lock", string(missing.Algorithm()) + "-" + missing.Encoded() + ".lock"},
	}
	old := time.Now().Add(-48 * time.Hour)
	plants := []lockPlant{
		{name: "FIFO", make: func(t *testing.T, path, _ string) {
			check(t, syscall.Mkfifo(path, 0o644))
			check(t, os.Chtimes(path, old, old))
		}},
		{name: "empty folder", make: func(t *testing.T, path, _ string) {
			check(t, os.Mkdir(path, 0o755))
			check(t, os.Chtimes(path, old, old))
		}},
		{name: "folder of files", folder: true, make: func(t *testing.T, path, _ string) {
			// Old files, some with layercache's names: a sweep that
			// looked inside would take them.
			check(t, os.MkdirAll(filepath.Join(path, "sub"), 0o755))
			for _, n := range []string{"notes.txt", "blob-1234.tmp", "sha256-" + missing.Encoded() + ".lock", "sub/part-0001.csv"} {
				p := filepath.Join(path, n)
				check(t, os.WriteFile(p, []byte("someone's "+n), 0o644))
				check(t, os.Chtimes(p, old, old))
			}
			check(t, os.Chtimes(filepath.Join(path, "sub"), old, old))
			check(t, os.Chtimes(path, old, old))
		}},
		{name: "symlink to a missing outside file", make: func(t *testing.T, path, outside string) {
			check(t, os.Symlink(filepath.Join(outside, "created-through-the-link"), path))
		}},
		{name: "symlink to an outside folder of files", make: func(t *testing.T, path, outside string) {
			check(t, os.Symlink(filepath.Join(outside, "folder"), path))
		}},
	}

	// Each plant has caches of its own, so the plants run in parallel (as
	// many at once as -test.parallel says), in a group that the report
	// waits for.
	var mu sync.Mutex
	var violations []string
	runs := 0
	t.Run("locks", func(t *testing.T) {
		for _, lock := range locks {
			for _, pl := range plants {
				t.Run(lock.name+"/"+pl.name, func(t *testing.T) {
					t.Parallel()
					for _, op := range ops {
						bad := runAtPlantedLock(t, template, img, missing, lock, pl, op)
						mu.Lock()
						runs++
						for _, b := range bad {
							t.Errorf("%s", b)
							violations = append(violations, lock.name+", "+pl.name+": "+b)
						}
						mu.Unlock()
					}
				})
			}
		}
	})
	report.add(t, row{
		scenario: "5c. hostile lock files",
		ops:      runs, faults: fmt.Sprintf("%d special files at locks", len(locks)*len(plants)),
		violations: len(violations), details: violations,
	})
}

// lockName is a lock file in ingest/.
type lockName struct{ name, file string }

// lockPlant is something TestHostileLockFiles plants at a lock file's name.
type lockPlant struct {
	name string
	// make plants at path; outside is a folder of the test's, outside the
	// cache, holding folder/a.txt and folder/sub/b.txt.
	make func(t *testing.T, path, outside string)
	// folder: what it plants is a folder of files, which must stay.
	folder bool
}

// runAtPlantedLock copies the cache template, plants pl at lock, runs op
// on the copy, and describes what went wrong.
func runAtPlantedLock(t *testing.T, template string, img *image, missing digest.Digest, lock lockName, pl lockPlant, op hostileOp) []string {
	dir := filepath.Join(t.TempDir(), "cache")
	copyDir(t, template, dir)
	outside := t.TempDir()
	check(t, os.MkdirAll(filepath.Join(outside, "folder", "sub"), 0o755))
	check(t, os.WriteFile(filepath.Join(outside, "folder", "a.txt"), []byte("a"), 0o644))
	check(t, os.WriteFile(filepath.Join(outside, "folder", "sub", "b.txt"), []byte("b"), 0o644))
	path := filepath.Join(dir, layoutfs.IngestDir, lock.file)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	pl.make(t, path, outside)
	fi, err := os.Lstat(path)
	check(t, err)
	kind := fi.Mode().Type()
	var planted map[string]string
	if pl.folder {
		planted = snapshot(t, path)
	}
	outsideBefore := snapshot(t, outside)

	bin, args := op.cmd(dir)
	p := runProc(t, bin, args...)
	var bad []string
	if pl.folder {
		// A command that needs this lock cannot take it; its error must
		// say which file is in the way.
		bad = p.problems(lock.file)
		if _, err := os.Lstat(path); err != nil {
			bad = append(bad, fmt.Sprintf("%s: the folder of files at the lock is gone: %v", op.name, err))
		} else if d := diffSnapshots(planted, snapshot(t, path)); d != "" {
			bad = append(bad, fmt.Sprintf("%s: the folder of files at the lock changed: %s", op.name, d))
		}
	} else {
		// Replaced by a lock file, or left alone by a command that did
		// not take this lock.
		bad = p.problems()
		if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() && fi.Mode().Type() != kind {
			bad = append(bad, fmt.Sprintf("%s: a %v stands at the lock now", op.name, fi.Mode().Type()))
		}
	}
	if d := diffSnapshots(outsideBefore, snapshot(t, outside)); d != "" {
		bad = append(bad, fmt.Sprintf("%s: written through a symlink to outside the cache: %s", op.name, d))
	}
	if p.code == 0 && (op.name == "warm" || op.name == "pull") {
		// A pull that cannot take a lock goes on without what the lock
		// guards: the layer is not stored (blob lock), the tag not
		// recorded (index lock).
		wantLayer := !pl.folder || lock.name != "blob lock"
		wantRef := !pl.folder || lock.name != "index lock"
		bad = append(bad, didPull(dir, img, missing, wantLayer, wantRef)...)
	}
	return bad
}

// didPull checks what a warm or a pull that succeeded must leave in the
// cache at dir: the layer that was missing, whole (if wantLayer), and the
// image's tag recorded (if wantRef). It reads the files itself, opening
// nothing that is not a regular file.
func didPull(dir string, img *image, layer digest.Digest, wantLayer, wantRef bool) []string {
	var bad []string
	if err := wholeBlob(dir, layer, -1); wantLayer && err != nil {
		bad = append(bad, fmt.Sprintf("after a successful pull, the layer it fetched: %v", err))
	}
	if !wantRef {
		return bad
	}
	idx, err := layoutfs.Path(dir).ReadIndex()
	if err != nil {
		return append(bad, fmt.Sprintf("after a successful pull: index.json: %v", err))
	}
	for _, m := range idx.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] == img.ref.Name() && m.Digest == img.digest {
			return bad
		}
	}
	return append(bad, fmt.Sprintf("after a successful pull, %s is not recorded in index.json", img.ref.Name()))
}

// wholeBlob reports whether the file at d's name in the cache at dir is a
// regular file holding d's bytes (of size bytes, unless size is -1),
// without reading one that is larger than MaxBlobInMemory.
func wholeBlob(dir string, d digest.Digest, size int64) error {
	p, err := layoutfs.Path(dir).BlobPath(d)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(p)
	switch {
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is %v, not a file", p, fi.Mode().Type())
	case size >= 0 && fi.Size() != size:
		return fmt.Errorf("%s holds %d bytes, want %d", p, fi.Size(), size)
	case fi.Size() > store.MaxBlobInMemory:
		return fmt.Errorf("%s holds %d bytes", p, fi.Size())
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if sum := sha256.Sum256(b); "sha256:"+hex.EncodeToString(sum[:]) != d.String() {
		return fmt.Errorf("%s does not hash to its name", p)
	}
	return nil
}

// TestHostileOversized replaces a warmed image's manifest, its config, or
// both with sparse files far larger than any manifest (1 TiB, which no
// machine that runs this can hold in memory, and one byte past
// store.MaxBlobInMemory), and runs every command on a fresh copy. None
// reads such a file into memory: Get and Inspect refuse it with
// ErrTooLarge and leave it in place, images, ls, stats, put, prune and
// clear finish, and a pull and a warm fetch the manifest and config again,
// replacing the planted files, after which verify finds the cache sound.
// Commands run in processes of their own, whose peak memory is bounded.
func TestHostileOversized(t *testing.T) {
	w := newWorld(t, []int64{64 << 10, 32 << 10})
	img := w.images[0]
	template := filepath.Join(t.TempDir(), "template")
	warm(t, template, img)
	manifest, config := img.blobs[0], img.blobs[1]
	sizes := map[digest.Digest]int64{manifest: img.size, config: img.bytes}
	for _, l := range img.layers {
		sizes[config] -= l
	}
	file := filepath.Join(t.TempDir(), "put.bin")
	check(t, os.WriteFile(file, []byte("bytes to put beside oversized manifests"), 0o644))
	tortured, cli := helpers(t)
	ops := hostileOps(t, img, file)
	c := func(dir string, args ...string) proc {
		return runProc(t, cli, append(args, "--cache-dir", dir)...)
	}

	const tib = 1 << 40
	plants := []struct {
		name  string
		blobs []digest.Digest
		size  int64
	}{
		{"manifest, 1 TiB", []digest.Digest{manifest}, tib},
		{"config, 1 TiB", []digest.Digest{config}, tib},
		{"manifest and config, 1 TiB", []digest.Digest{manifest, config}, tib},
		{"manifest and config, MaxBlobInMemory+1", []digest.Digest{manifest, config}, store.MaxBlobInMemory + 1},
	}
	var violations []string
	runs := 0
	for _, pl := range plants {
		t.Run(pl.name, func(t *testing.T) {
			var bad []string
			fresh := func() string {
				dir := filepath.Join(t.TempDir(), "cache")
				copyDir(t, template, dir)
				for _, d := range pl.blobs {
					// The blob's bytes, then zeros up to the size, none
					// of them on disk: a reader of the first bytes alone
					// would find the real manifest.
					p, err := layoutfs.Path(dir).BlobPath(d)
					check(t, err)
					check(t, os.Truncate(p, pl.size))
				}
				return dir
			}
			planted := func(op, dir string) {
				for _, d := range pl.blobs {
					p, _ := layoutfs.Path(dir).BlobPath(d)
					if fi, err := os.Lstat(p); err != nil || fi.Size() != pl.size {
						bad = append(bad, fmt.Sprintf("%s: the planted file at %s is gone or changed (%v)", op, d, err))
					}
				}
			}
			fetched := func(op, dir string) {
				for _, d := range pl.blobs {
					if err := wholeBlob(dir, d, sizes[d]); err != nil {
						bad = append(bad, fmt.Sprintf("%s did not fetch %s again: %v", op, d, err))
					}
				}
			}

			// The library: Get and Inspect refuse, before allocating, and
			// leave the file. In tortured, so that a regression that
			// allocated 1 TiB would end that process, not the suite.
			for _, d := range pl.blobs {
				for _, op := range []string{torture.OpGet, torture.OpInspect} {
					dir := fresh()
					p := runProc(t, tortured, "op", "-dir", dir, "-op", op, "-target", d.String())
					runs++
					bad = append(bad, p.problems(store.ErrTooLarge.Error())...)
					if p.code != 1 {
						bad = append(bad, fmt.Sprintf("%s: exit %d, want 1 with ErrTooLarge", p.line, p.code))
					}
					planted(op, dir)
				}
			}

			// Commands that look: they finish, and leave the files.
			for _, args := range [][]string{{"images"}, {"ls"}, {"stats"}} {
				dir := fresh()
				p := c(dir, args...)
				runs++
				bad = append(bad, p.problems()...)
				if args[0] == "images" && slices.Contains(pl.blobs, manifest) && !strings.Contains(p.stdout, "(incomplete)") {
					bad = append(bad, fmt.Sprintf("images lists the image as complete: %s", oneLine(p.stdout)))
				}
				planted(args[0], dir)
			}
			for _, op := range ops {
				if op.name == "verify" && pl.size > store.MaxBlobInMemory+1 {
					// Verify hashes every byte of every blob: 1 TiB
					// of zeros would take many minutes. It runs on
					// the cache a warm repaired, below.
					continue
				}
				dir := fresh()
				bin, args := op.cmd(dir)
				p := runProc(t, bin, args...)
				runs++
				switch op.name {
				case "warm", "pull":
					bad = append(bad, p.problems()...)
					fetched(op.name, dir)
					if op.name == "warm" && p.code == 0 {
						v := c(dir, "verify")
						runs++
						bad = append(bad, v.problems()...)
						if v.code != 0 || !strings.Contains(v.stdout, "all good") {
							bad = append(bad, fmt.Sprintf("verify after the warm: %s", oneLine(v.stdout+v.stderr)))
						}
					}
				case "verify":
					// The planted files are not their blobs: reported,
					// and left in place without --repair.
					bad = append(bad, p.problems("corrupted")...)
					if p.code != 1 {
						bad = append(bad, fmt.Sprintf("verify of the planted files: exit %d, want 1: %s", p.code, oneLine(p.stdout)))
					}
					planted(op.name, dir)
				default:
					bad = append(bad, p.problems()...)
				}
			}
			for _, b := range bad {
				t.Errorf("%s", b)
				violations = append(violations, pl.name+": "+b)
			}
		})
	}
	report.add(t, row{
		scenario: "5d. oversized manifests, configs",
		ops:      runs, faults: fmt.Sprintf("%d sparse files (<= 1 TiB)", len(plants)),
		violations: len(violations), details: append(violations,
			"verify runs on the 1 TiB files only after a warm replaced them: it hashes every byte of every blob"),
	})
}

// TestHostileUserFolders points layercache at folders of someone's files
// that look like a cache without being one: no oci-layout, and an ingest/
// with files and a subfolder, an index.json of the user's, a blobs/ with a
// file, and the like. Every command and the library refuse each folder
// (ErrNotLayout; exit status 1 with one line that says so) and touch
// nothing in it: the tree, modification times included, is the same
// after each command as it was before it.
func TestHostileUserFolders(t *testing.T) {
	w := newWorld(t, []int64{32 << 10})
	img := w.images[0]
	file := filepath.Join(t.TempDir(), "put.bin")
	check(t, os.WriteFile(file, []byte("bytes to put into someone's folder"), 0o644))
	ops := append(hostileOps(t, img, file), []hostileOp{
		{"images", func(dir string) (string, []string) {
			_, cli := helpers(t)
			return cli, []string{"images", "--cache-dir", dir}
		}},
		{"ls", func(dir string) (string, []string) {
			_, cli := helpers(t)
			return cli, []string{"ls", "--cache-dir", dir}
		}},
	}...)

	old := time.Now().Add(-48 * time.Hour)
	// write makes the files of a folder, two days old, so that a sweep
	// would take those with layercache's names. A value "dir" makes a
	// folder, "fifo" a FIFO, "->target" a symlink.
	write := func(t *testing.T, root string, files map[string]string) {
		for name, content := range files {
			p := filepath.Join(root, name)
			check(t, os.MkdirAll(filepath.Dir(p), 0o755))
			switch {
			case content == "dir":
				check(t, os.MkdirAll(p, 0o755))
			case content == "fifo":
				check(t, syscall.Mkfifo(p, 0o644))
			case strings.HasPrefix(content, "->"):
				check(t, os.Symlink(strings.TrimPrefix(content, "->"), p))
				continue
			default:
				check(t, os.WriteFile(p, []byte(content), 0o644))
			}
		}
		// Times last, deepest first, so that making a file does not
		// refresh its folder's.
		var paths []string
		check(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type()&fs.ModeSymlink == 0 {
				paths = append(paths, p)
			}
			return err
		}))
		for i := len(paths) - 1; i >= 0; i-- {
			check(t, os.Chtimes(paths[i], old, old))
		}
	}
	userBlob := []byte("someone's blob")
	emptyIndex := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	folders := []struct {
		name  string
		files map[string]string
	}{
		{"ingest of files and a subfolder", map[string]string{
			"ingest/customers.csv": "id,name\n1,Ada\n", "ingest/batch/part-0001.csv": "1,2,3\n", "ingest/blob-1234.tmp": "a temp file's name",
		}},
		{"index.json of the user's", map[string]string{"index.json": `{"name":"my-app","version":"1.0.0"}`}},
		{"an OCI index, empty blobs and ingest", map[string]string{
			"index.json": fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d}]}`, img.digest, img.size),
			"blobs":      "dir", "ingest": "dir",
		}},
		{"blobs with a file", map[string]string{"blobs/readme.txt": "my notes"}},
		{"a layout without oci-layout", map[string]string{
			"blobs/sha256/" + digest.FromBytes(userBlob).Encoded(): string(userBlob), "index.json": emptyIndex, "ingest": "dir",
		}},
		{"all of these", map[string]string{
			"ingest/customers.csv": "id,name\n", "ingest/batch/part-0001.csv": "1,2,3\n", "ingest/sha256-" + img.digest.Encoded() + ".lock": "",
			"index.json": `{"name":"my-app"}`, "blobs/readme.txt": "my notes",
		}},
		{"oci-layout a folder", map[string]string{"oci-layout/notes.txt": "not a layout", "blobs": "dir"}},
		{"oci-layout a file of the user's", map[string]string{"oci-layout": "my notes on the OCI layout spec\n"}},
		{"ingest with a FIFO", map[string]string{"ingest/index.json.lock": "fifo", "ingest/blob-1.tmp": "x"}},
		{"ingest a symlink to the user's folder", map[string]string{"docs/a.txt": "a", "docs/blob-1.tmp": "x", "ingest": "->docs"}},
	}
	var violations []string
	runs := 0
	for _, f := range folders {
		t.Run(f.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "project")
			check(t, os.Mkdir(dir, 0o755))
			write(t, dir, f.files)
			before := snapshot(t, dir)
			var bad []string
			touched := func(what string) {
				if d := diffSnapshots(before, snapshot(t, dir)); d != "" {
					bad = append(bad, fmt.Sprintf("%s changed the folder: %s", what, d))
					before = snapshot(t, dir)
				}
			}
			if _, err := layoutfs.Create(dir); !errors.Is(err, layoutfs.ErrNotLayout) {
				bad = append(bad, fmt.Sprintf("layoutfs.Create: %v, want ErrNotLayout", err))
			}
			touched("layoutfs.Create")
			if _, err := store.Open(dir); !errors.Is(err, store.ErrNotLayout) {
				bad = append(bad, fmt.Sprintf("store.Open: %v, want ErrNotLayout", err))
			}
			touched("store.Open")
			runs += 2
			for _, op := range ops {
				bin, args := op.cmd(dir)
				p := runProc(t, bin, args...)
				runs++
				bad = append(bad, p.problems(layoutfs.ErrNotLayout.Error())...)
				switch {
				case p.code != 1:
					bad = append(bad, fmt.Sprintf("%s: exit %d, want 1: refused", p.line, p.code))
				case strings.Count(strings.TrimSpace(p.stderr), "\n") > 0:
					bad = append(bad, fmt.Sprintf("%s: more than one line on stderr: %s", p.line, oneLine(p.stderr)))
				}
				touched(op.name)
			}
			for _, b := range bad {
				t.Errorf("%s", b)
				violations = append(violations, f.name+": "+b)
			}
		})
	}
	report.add(t, row{
		scenario: "5e. folders of user files",
		ops:      runs, faults: fmt.Sprintf("%d look-alike folders", len(folders)),
		violations: len(violations), details: violations,
	})
}
