package layoutfs_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/internal/testutil"
)

var (
	hex64  = strings.Repeat("0123456789abcdef", 4)
	hex128 = strings.Repeat("0123456789abcdef", 8)
)

func TestBlobPath(t *testing.T) {
	p := layoutfs.Path("/cache")
	tests := []struct {
		digest digest.Digest
		want   string
		reason string
	}{
		{digest.Digest("sha256:" + hex64), "/cache/blobs/sha256/" + hex64, "sha256"},
		{digest.Digest("sha512:" + hex128), "/cache/blobs/sha512/" + hex128, "sha512"},
		{digest.FromString("hello"), "/cache/blobs/sha256/" + digest.FromString("hello").Encoded(), "computed by go-digest"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			got, err := p.BlobPath(tc.digest)
			if err != nil {
				t.Fatalf("BlobPath(%q): %v", tc.digest, err)
			}
			if got != tc.want {
				t.Errorf("BlobPath(%q): got %q, want %q", tc.digest, got, tc.want)
			}
			if err := layoutfs.Validate(tc.digest); err != nil {
				t.Errorf("Validate(%q): %v", tc.digest, err)
			}
		})
	}
}

func TestBlobPath_Invalid(t *testing.T) {
	dir := t.TempDir()
	p, err := layoutfs.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := testutil.Snapshot(t, dir)
	for _, tc := range testutil.InvalidDigests {
		t.Run(tc.Reason, func(t *testing.T) {
			got, err := p.BlobPath(tc.Digest)
			if !errors.Is(err, layoutfs.ErrInvalidDigest) {
				t.Errorf("BlobPath(%q): got (%q, %v), want ErrInvalidDigest", tc.Digest, got, err)
			}
			if got != "" {
				t.Errorf("BlobPath(%q): got path %q, want %q", tc.Digest, got, "")
			}
			if err := layoutfs.Validate(tc.Digest); !errors.Is(err, layoutfs.ErrInvalidDigest) {
				t.Errorf("Validate(%q): got %v, want ErrInvalidDigest", tc.Digest, err)
			}
			if _, err := p.LockBlob(t.Context(), tc.Digest); !errors.Is(err, layoutfs.ErrInvalidDigest) {
				t.Errorf("LockBlob(%q): got %v, want ErrInvalidDigest", tc.Digest, err)
			}
		})
	}
	testutil.AssertUnchanged(t, dir, before)
}

func TestValidate_ErrorNamesTheDigest(t *testing.T) {
	err := layoutfs.Validate("sha256:../../etc/passwd")
	if err == nil || !strings.Contains(err.Error(), `"sha256:../../etc/passwd"`) {
		t.Errorf("Validate: got %v, want an error quoting the digest", err)
	}
}

func TestAlgorithmDir(t *testing.T) {
	p := layoutfs.Path("/cache")
	for _, alg := range layoutfs.Algorithms {
		if got, want := p.AlgorithmDir(alg), filepath.Join("/cache", "blobs", string(alg)); got != want {
			t.Errorf("AlgorithmDir(%s): got %q, want %q", alg, got, want)
		}
	}
	if got, want := layoutfs.Algorithms, []digest.Algorithm{digest.SHA256, digest.SHA512}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Algorithms: got %q, want %q", got, want)
	}
}

func TestParseBlobName(t *testing.T) {
	tests := []struct {
		alg    digest.Algorithm
		name   string
		want   digest.Digest
		reason string
	}{
		{digest.SHA256, hex64, digest.Digest("sha256:" + hex64), "sha256 blob"},
		{digest.SHA512, hex128, digest.Digest("sha512:" + hex128), "sha512 blob"},
		{digest.SHA256, hex128, "", "sha512 name in the sha256 folder"},
		{digest.SHA256, "README", "", "foreign file"},
		{digest.SHA256, hex64 + ".tmp", "", "temp-like name"},
		{digest.SHA256, "..", "", "parent directory"},
		{digest.SHA256, "", "", "empty name"},
		{digest.SHA256, strings.ToUpper(hex64), "", "uppercase copy of a blob name"},
		{"md5", "d41d8cd98f00b204e9800998ecf8427e", "", "folder of an unsupported algorithm"},
	}
	for _, tc := range tests {
		t.Run(tc.reason, func(t *testing.T) {
			got, err := layoutfs.ParseBlobName(tc.alg, tc.name)
			if tc.want == "" {
				if !errors.Is(err, layoutfs.ErrInvalidDigest) {
					t.Errorf("ParseBlobName(%s, %q): got (%q, %v), want ErrInvalidDigest", tc.alg, tc.name, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseBlobName(%s, %q): got (%q, %v), want %q", tc.alg, tc.name, got, err, tc.want)
			}
		})
	}
}

// FuzzBlobPath checks the one promise that keeps the cache safe from its
// input: any string either is refused with ErrInvalidDigest or names a file
// strictly inside blobs/<alg>/, and that file's name parses back to the
// same digest.
func FuzzBlobPath(f *testing.F) {
	for _, tc := range testutil.InvalidDigests {
		f.Add(string(tc.Digest))
	}
	f.Add("sha256:" + hex64)
	f.Add("sha512:" + hex128)
	root := layoutfs.Path(filepath.Join(string(filepath.Separator), "var", "cache", "layercache"))
	algDirs := map[string]digest.Algorithm{}
	for _, alg := range layoutfs.Algorithms {
		algDirs[root.AlgorithmDir(alg)] = alg
	}
	f.Fuzz(func(t *testing.T, s string) {
		d := digest.Digest(s)
		path, err := root.BlobPath(d)
		if err != nil {
			if !errors.Is(err, layoutfs.ErrInvalidDigest) {
				t.Fatalf("BlobPath(%q): got %v, want ErrInvalidDigest", s, err)
			}
			if path != "" {
				t.Fatalf("BlobPath(%q): got path %q with an error", s, path)
			}
			return
		}
		if filepath.Clean(path) != path {
			t.Fatalf("BlobPath(%q): got %q, which is not clean", s, path)
		}
		dir, name := filepath.Split(path)
		alg, ok := algDirs[filepath.Clean(dir)]
		if !ok {
			t.Fatalf("BlobPath(%q): got %q, outside every blobs/<alg>/", s, path)
		}
		rel, err := filepath.Rel(root.AlgorithmDir(alg), path)
		if err != nil || rel != name || rel == "." || strings.Contains(rel, "..") || strings.ContainsRune(rel, filepath.Separator) {
			t.Fatalf("BlobPath(%q): got %q, not strictly inside %s (rel %q, %v)", s, path, root.AlgorithmDir(alg), rel, err)
		}
		back, err := layoutfs.ParseBlobName(alg, name)
		if err != nil || back != d {
			t.Fatalf("ParseBlobName(%s, %q): got (%q, %v), want %q", alg, name, back, err, s)
		}
	})
}
