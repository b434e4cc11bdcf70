package integration_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// corruption damages the blob file at path in place. other is the path of
// another blob of the same store, for the damage that points at it.
type corruption struct {
	name  string
	apply func(t *testing.T, path, other string)
}

var corruptions = []corruption{
	// A download or copy cut short.
	{"truncated", func(t *testing.T, path, _ string) {
		fi := stat(t, path)
		writable(t, path)
		check(t, os.Truncate(path, fi.Size()/2))
	}},
	// Garbage appended: the right bytes are all there, and more.
	{"extended", func(t *testing.T, path, _ string) {
		writable(t, path)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		check(t, err)
		_, err = f.Write([]byte("trailing garbage"))
		check(t, err)
		check(t, f.Close())
	}},
	// A bit flipped by a bad disk: same size, wrong bytes.
	{"bit-flipped", func(t *testing.T, path, _ string) {
		b, err := os.ReadFile(path)
		check(t, err)
		b[len(b)/2] ^= 0x10
		writable(t, path)
		check(t, os.WriteFile(path, b, 0o444))
	}},
	// Zero bytes, as a crash of a non-atomic writer leaves.
	{"empty", func(t *testing.T, path, _ string) {
		writable(t, path)
		check(t, os.Truncate(path, 0))
	}},
	// A directory at the blob's name, with something in it.
	{"directory", func(t *testing.T, path, _ string) {
		check(t, os.Remove(path))
		check(t, os.Mkdir(path, 0o755))
		check(t, os.WriteFile(filepath.Join(path, "file"), []byte("x"), 0o644))
	}},
	// A symlink to another, valid blob: a reader that follows it serves
	// the wrong content, and a careless repair deletes the other blob.
	{"symlink", func(t *testing.T, path, other string) {
		check(t, os.Remove(path))
		check(t, os.Symlink(other, path))
	}},
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Lstat(path)
	check(t, err)
	return fi
}

// writable undoes the store's read-only mode, so the damage also works for
// a non-root user.
func writable(t *testing.T, path string) {
	t.Helper()
	check(t, os.Chmod(path, 0o644))
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCorruption plants each kind of damage on a layer, the config and the
// manifest of a warmed image, and pulls it again: the pull returns the
// right bytes, exactly the damaged blob is fetched again, and the store is
// sound afterwards.
func TestCorruption(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	// A proxy only to find out what to push; each case has its own.
	fx0 := pushImage(t, reg, regtest.NewProxy(t, reg.Addr), "corrupt/img:v1", 150<<10, 400<<10)
	m := must(fx0.img.Manifest())

	targets := []struct {
		name   string
		digest digest.Digest
		// want is what the pull must fetch again.
		want regtest.Stats
	}{
		{"layer", toDigest(m.Layers[1].Digest),
			regtest.Stats{BlobGets: 1, BlobBytes: m.Layers[1].Size, ManifestGets: 0, BlobUploads: 0, Mounts: 0}},
		{"config", toDigest(m.Config.Digest),
			regtest.Stats{BlobGets: 1, BlobBytes: m.Config.Size, ManifestGets: 0, BlobUploads: 0, Mounts: 0}},
		// The manifest by digest, which a pull by tag reads after the
		// HEAD that resolves the tag.
		{"manifest", toDigest(must(fx0.img.Digest())),
			regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 1, BlobUploads: 0, Mounts: 0}},
	}
	// The blob the symlinks point at: a layer that stays whole.
	otherLayer := toDigest(m.Layers[0].Digest)

	for _, target := range targets {
		for _, c := range corruptions {
			t.Run(target.name+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				p := regtest.NewProxy(t, reg.Addr)
				fx := *fx0
				fx.tag = parseRef(t, p.Addr+"/corrupt/img:v1")
				s := openStore(t)
				if _, err := remotecache.Warm(t.Context(), fx.tag, s, cacheOptions(t)...); err != nil {
					t.Fatalf("Warm: %v", err)
				}
				path := blobPath(t, s, target.digest)
				other := blobPath(t, s, otherLayer)
				c.apply(t, path, other)

				p.Reset()
				logger, logs := newLogger(t)
				img, err := remotecache.Image(fx.tag, s, cacheOptions(t, remotecache.WithLogger(logger))...)
				if err != nil {
					t.Fatalf("Image: %v", err)
				}
				assertPulled(t, "pull", readImage(t, img), fx.want)
				assertStats(t, "pull", p.Stats(), target.want)
				if !strings.Contains(logs.String(), "corrupted") {
					t.Errorf("no warning about the corrupted blob was logged")
				}

				// The damaged entry is a whole blob again, and the
				// symlink's target was not touched.
				if fi := stat(t, path); !fi.Mode().IsRegular() {
					t.Errorf("%s is %v after the pull, want a regular file", path, fi.Mode())
				}
				assertHolds(t, s, fx.blobs(t)...)
				assertStoreSound(t, s)

				// And the next pull is warm again.
				p.Reset()
				img, err = remotecache.Image(fx.tag, s, cacheOptions(t)...)
				if err != nil {
					t.Fatalf("Image: %v", err)
				}
				assertPulled(t, "second pull", readImage(t, img), fx.want)
				assertStats(t, "second pull", p.Stats(), regtest.Stats{BlobGets: 0, BlobBytes: 0, ManifestGets: 0, BlobUploads: 0, Mounts: 0})
			})
		}
	}
}

func blobPath(t *testing.T, s *store.Store, d digest.Digest) string {
	t.Helper()
	path, err := layout.Path(s.Dir()).BlobPath(d)
	check(t, err)
	return path
}
