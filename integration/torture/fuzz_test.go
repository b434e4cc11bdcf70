package torture_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/integration/regtest"
	"github.com/ocibuild/layercache/pkg/store"
)

// FuzzMutatedJSON has the fault proxy rewrite the JSON the registry serves
// (manifests, or configs and other JSON blobs) with a fuzzed patch: each
// key of the patch replaces the document's, and null removes it. A pull
// through the cache either fails or returns the pushed image's bytes, and
// the store never keeps a rewritten document.
func FuzzMutatedJSON(f *testing.F) {
	for _, seed := range []struct {
		patch    string
		manifest bool
	}{
		{`{"layers":[]}`, true},
		{`{"layers":null}`, true},
		{`{"config":{"digest":"sha256:../../../etc/passwd","size":1}}`, true},
		{`{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + digest.FromString("x").Encoded() + `","size":1}}`, true},
		{`{"schemaVersion":1}`, true},
		{`{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, true},
		{`{"rootfs":{"type":"layers","diff_ids":[]}}`, false},
		{`{"rootfs":null}`, false},
		{`{"architecture":7}`, false},
		{`{}`, false},
		{`not json`, true},
	} {
		f.Add([]byte(seed.patch), seed.manifest)
	}
	reg := regtest.Start(f)
	proxy := regtest.NewProxy(f, reg.Addr)
	img := regtest.PushImage(f, reg.Addr+"/fuzz/img:v1", 32<<10, 16<<10)
	ref := parseRefTB(f, proxy.Addr+"/fuzz/img:v1")
	want := map[string]bool{}
	raw, _ := img.RawManifest()
	want[digest.FromBytes(raw).String()] = true
	m, _ := img.Manifest()
	want[m.Config.Digest.String()] = true
	for _, l := range m.Layers {
		want[l.Digest.String()] = true
	}
	s, err := store.Open(filepath.Join(f.TempDir(), "cache"))
	if err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, patch []byte, manifest bool) {
		var p map[string]json.RawMessage
		if json.Unmarshal(patch, &p) != nil {
			p = nil
		}
		match := regtest.IsBlobGet
		if manifest {
			match = regtest.IsManifestGet
		}
		in := proxy.Inject(regtest.MutateJSON(func(doc map[string]any) {
			for k, v := range p {
				var val any
				if json.Unmarshal(v, &val) != nil || val == nil {
					delete(doc, k)
					continue
				}
				doc[k] = val
			}
		}).Only(match))
		defer in.Remove()
		// Start cold, so that what the pull reads comes through the proxy.
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		_ = s.Clear(ctx)
		got, bad, err := pullAll(ctx, t, s, ref)
		t.Logf("pull: %v (%d blobs read; the fault applied %d times)", err, len(got), in.Fired())
		for _, b := range bad {
			t.Errorf("pull with a rewritten %s: %s", map[bool]string{true: "manifest", false: "blob"}[manifest], b)
		}
		if err == nil {
			for d := range want {
				if !got[d] {
					t.Errorf("pull succeeded without reading %s of the pushed image", d)
				}
			}
		}
		err = s.Walk(ctx, func(i store.Info) error {
			if _, err := s.Stat(ctx, i.Digest, store.VerifyFirst); err != nil {
				t.Errorf("the store kept a blob that does not verify: %v", err)
			}
			if !want[i.Digest.String()] {
				t.Errorf("the store kept %s, which is no blob of the pushed image", i.Digest)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
