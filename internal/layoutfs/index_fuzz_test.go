package layoutfs_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocibuild/layercache/internal/layoutfs"
)

// fzManifest is an image manifest stored as a blob in the fuzzed layout,
// so that a rebuild of index.json has something to find.
const fzManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
	`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`

// FuzzIndex writes arbitrary bytes as index.json: garbage, truncated
// files, wrong types, hostile digests (huge files are TestReadIndex's). ReadIndex reports ErrBadIndex
// or returns an index whose every digest validates, never a panic; the
// next UpdateIndex succeeds, keeps every valid entry, or, for a bad file,
// keeps it as index.json.corrupt and rebuilds the index from the blobs.
func FuzzIndex(f *testing.F) {
	valid := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("ab", 32) + `","size":7,` +
		`"annotations":{"org.opencontainers.image.ref.name":"example.com/a:1"}}]}`
	for _, s := range []string{valid, valid[:len(valid)/2], "", "null", "[]", "{}", `{"schemaVersion":2}`,
		`{"schemaVersion":2,"manifests":[{"digest":"sha256:../../etc/passwd","size":1}]}`,
		`{"schemaVersion":2,"manifests":{"digest":7}}`, "\x00\xff\xfe garbage"} {
		f.Add([]byte(s))
	}

	dir := f.TempDir()
	p, err := layoutfs.Create(dir)
	if err != nil {
		f.Fatal(err)
	}
	md := digest.FromString(fzManifest)
	path, _ := p.BlobPath(md)
	if err := os.MkdirAll(p.AlgorithmDir(md.Algorithm()), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(fzManifest), 0o444); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, content []byte) {
		os.Remove(p.Join(layoutfs.CorruptIndexFile))
		if err := os.WriteFile(p.Join(layoutfs.IndexFile), content, 0o644); err != nil {
			t.Fatal(err)
		}
		before, rerr := p.ReadIndex()
		if rerr != nil && !errors.Is(rerr, layoutfs.ErrBadIndex) {
			t.Fatalf("ReadIndex: %v, want nil or ErrBadIndex", rerr)
		}
		if rerr == nil {
			fzCheckIndex(t, before)
		}
		err := p.UpdateIndex(t.Context(), func(idx *ocispec.Index) error {
			idx.Manifests = append(idx.Manifests, ocispec.Descriptor{
				MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: int64(len(fzManifest)),
				Annotations: map[string]string{ocispec.AnnotationRefName: "fuzz"},
			})
			return nil
		})
		if err != nil {
			t.Fatalf("UpdateIndex: %v", err)
		}
		after, err := p.ReadIndex()
		if err != nil {
			t.Fatalf("ReadIndex after UpdateIndex: %v", err)
		}
		fzCheckIndex(t, after)
		if rerr == nil {
			if len(after.Manifests) != len(before.Manifests)+1 {
				t.Fatalf("UpdateIndex of a valid index: %d entries, want %d", len(after.Manifests), len(before.Manifests)+1)
			}
			return
		}
		// A bad index: kept aside, and rebuilt with the stored manifest.
		kept, err := os.ReadFile(p.Join(layoutfs.CorruptIndexFile))
		if err != nil || !bytes.Equal(kept, content) {
			t.Fatalf("the bad index.json was not kept as %s (%v)", layoutfs.CorruptIndexFile, err)
		}
		var rebuilt bool
		for _, m := range after.Manifests {
			rebuilt = rebuilt || (m.Digest == md && m.Annotations[ocispec.AnnotationRefName] == "")
		}
		if !rebuilt {
			b, _ := json.Marshal(after)
			t.Fatalf("the rebuilt index does not list the stored manifest %s: %s", md, b)
		}
	})
}

func fzCheckIndex(t *testing.T, idx ocispec.Index) {
	t.Helper()
	if idx.SchemaVersion != 2 || idx.Manifests == nil {
		t.Fatalf("index: schemaVersion %d, manifests %v", idx.SchemaVersion, idx.Manifests)
	}
	for i, m := range idx.Manifests {
		if err := layoutfs.Validate(m.Digest); err != nil {
			t.Fatalf("index: manifests[%d]: %v", i, err)
		}
	}
}
