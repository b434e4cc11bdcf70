package integration_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ocibuild/layercache/integration/regtest"
)

// pullOptions are ggcr options for reads through the proxy: a transport of
// the test's own, and retries 10 ms apart instead of 1 s and 3 s so that
// faults which survive the retries fail fast.
func pullOptions(t *testing.T) []remote.Option {
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return []remote.Option{
		remote.WithContext(t.Context()),
		remote.WithTransport(tr),
		remote.WithRetryBackoff(remote.Backoff{Duration: 10 * time.Millisecond, Factor: 1, Steps: 3}),
	}
}

func ref(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// readLayer reads layer digest d of repo through the proxy in full, the way
// a puller does: the verifying reader of Compressed checks size and digest
// at EOF.
func readLayer(t *testing.T, p *regtest.Proxy, repo string, d v1.Hash) (int64, error) {
	t.Helper()
	l, err := remote.Layer(ref(t, p.Addr+"/"+repo+"@"+d.String()).(name.Digest), pullOptions(t)...)
	if err != nil {
		return 0, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.Copy(io.Discard, rc)
}

func TestHarness(t *testing.T) {
	reg := regtest.Start(t)
	img := regtest.PushImage(t, reg.Addr+"/smoke/img:v1", 256<<10, 1<<20)
	platforms := []v1.Platform{
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64", Variant: "v8"},
	}
	idx := regtest.PushIndex(t, reg.Addr+"/smoke/idx:v1", platforms, 64<<10)
	p := regtest.NewProxy(t, reg.Addr)

	wantDigest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	big, err := layers[1].Digest()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("PullImage", func(t *testing.T) {
		got, err := remote.Image(ref(t, p.Addr+"/smoke/img:v1"), pullOptions(t)...)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(got); err != nil {
			t.Fatalf("validate.Image: %v", err)
		}
		if d, _ := got.Digest(); d != wantDigest {
			t.Errorf("pulled digest %s, want %s", d, wantDigest)
		}
		if s := p.Stats(); s.ManifestGets < 1 || s.BlobGets < 3 {
			t.Errorf("stats %+v: want at least 1 manifest GET and 3 blob GETs", s)
		}
	})

	t.Run("PullIndex", func(t *testing.T) {
		got, err := remote.Index(ref(t, p.Addr+"/smoke/idx:v1"), pullOptions(t)...)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Index(got); err != nil {
			t.Fatalf("validate.Index: %v", err)
		}
		want, _ := idx.Digest()
		if d, _ := got.Digest(); d != want {
			t.Errorf("pulled digest %s, want %s", d, want)
		}
		m, err := got.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Manifests) != len(platforms) {
			t.Fatalf("%d manifests, want %d", len(m.Manifests), len(platforms))
		}
		for i, desc := range m.Manifests {
			if desc.Platform == nil || !desc.Platform.Equals(platforms[i]) {
				t.Errorf("manifest %d platform %v, want %v", i, desc.Platform, platforms[i])
			}
		}
	})

	t.Run("CountBlobBytes", func(t *testing.T) {
		p.Reset()
		var want int64
		for _, l := range layers {
			d, _ := l.Digest()
			size, _ := l.Size()
			n, err := readLayer(t, p, "smoke/img", d)
			if err != nil {
				t.Fatalf("layer %s: %v", d, err)
			}
			if n != size {
				t.Errorf("layer %s: read %d bytes, want %d", d, n, size)
			}
			want += size
		}
		s := p.Stats()
		if s.BlobGets != int64(len(layers)) || s.BlobBytes != want {
			t.Errorf("stats %+v: want BlobGets %d, BlobBytes %d", s, len(layers), want)
		}
		if s.ManifestGets != 0 || s.BlobUploads != 0 || s.Mounts != 0 {
			t.Errorf("stats %+v: want no manifest GETs, uploads or mounts", s)
		}
	})

	t.Run("CountPush", func(t *testing.T) {
		p.Reset()
		regtest.PushImage(t, p.Addr+"/smoke/pushed:v1", 1000, 2000)
		s := p.Stats()
		// Two layers and a config, each uploaded once; the manifest PUT
		// is no blob upload.
		if s.BlobUploads != 3 {
			t.Errorf("stats %+v: want 3 blob uploads", s)
		}
	})

	// Each fault is restricted to the 1 MiB layer, so that ggcr's ping and
	// any other request pass untouched.
	blob := func(f regtest.Fault) regtest.Fault {
		return f.Only(regtest.IsBlobGet).Only(regtest.HasDigest(big.String()))
	}
	faults := []struct {
		name  string
		fault regtest.Fault
		// check judges the read's error.
		check func(t *testing.T, err error)
		// fired is how often the fault must have applied.
		fired int64
	}{{
		name:  "Status503",
		fault: blob(regtest.Status(http.StatusServiceUnavailable)),
		check: func(t *testing.T, err error) {
			var terr *transport.Error
			if !errors.As(err, &terr) || terr.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("got %v, want a transport.Error with status 503", err)
			}
			if s := p.Stats(); s.BlobGets != 3 || s.BlobBytes != 0 {
				t.Errorf("stats %+v: want 3 blob GETs and no blob bytes", s)
			}
		},
		fired: 3, // ggcr tries three times
	}, {
		name:  "Status503Once",
		fault: blob(regtest.Status(http.StatusServiceUnavailable)).Times(1),
		check: func(t *testing.T, err error) {
			if err != nil {
				t.Errorf("got %v, want the retry to succeed", err)
			}
		},
		fired: 1,
	}, {
		name:  "Reset",
		fault: blob(regtest.ResetAfter(100 << 10)),
		check: func(t *testing.T, err error) {
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("got %v, want ECONNRESET or io.ErrUnexpectedEOF", err)
			}
		},
		fired: 1,
	}, {
		name:  "Truncate",
		fault: blob(regtest.TruncateAfter(100 << 10)),
		check: func(t *testing.T, err error) {
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("got %v, want io.ErrUnexpectedEOF", err)
			}
		},
		fired: 1,
	}, {
		name:  "FlipByte",
		fault: blob(regtest.FlipByte(1 << 19)),
		check: func(t *testing.T, err error) {
			// ggcr's verify.Error is internal: match its message.
			if err == nil || !strings.Contains(err.Error(), "error verifying sha256 checksum") {
				t.Errorf("got %v, want a digest mismatch", err)
			}
		},
		fired: 1,
	}}
	for _, tc := range faults {
		t.Run(tc.name, func(t *testing.T) {
			p.Reset()
			in := p.Inject(tc.fault)
			defer in.Remove()
			_, err := readLayer(t, p, "smoke/img", big)
			t.Logf("read: %v", err)
			tc.check(t, err)
			if got := in.Fired(); got != tc.fired {
				t.Errorf("fault fired %d times, want %d", got, tc.fired)
			}
		})
	}

	t.Run("MutateJSON", func(t *testing.T) {
		in := p.Inject(regtest.MutateJSON(func(doc map[string]any) {
			doc["annotations"] = map[string]any{"mutated": "yes"}
		}).Only(regtest.IsManifestGet))
		defer in.Remove()
		// By digest, ggcr checks the manifest against the digest.
		_, err := remote.Image(ref(t, p.Addr+"/smoke/img@"+wantDigest.String()), pullOptions(t)...)
		if err == nil || !strings.Contains(err.Error(), "does not match") {
			t.Errorf("got %v, want a manifest digest mismatch", err)
		}
		// By tag there is no digest to check against, but the mutation
		// shows in the manifest.
		got, err := remote.Image(ref(t, p.Addr+"/smoke/img:v1"), pullOptions(t)...)
		if err != nil {
			t.Fatal(err)
		}
		m, err := got.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		if m.Annotations["mutated"] != "yes" {
			t.Errorf("annotations %v, want mutated=yes", m.Annotations)
		}
	})

	t.Run("Latency", func(t *testing.T) {
		const delay = 300 * time.Millisecond
		in := p.Inject(regtest.Latency(delay).Only(regtest.IsManifestGet))
		defer in.Remove()
		start := time.Now()
		if _, err := remote.Get(ref(t, p.Addr+"/smoke/img:v1"), pullOptions(t)...); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < delay {
			t.Errorf("GET took %v, want at least %v", took, delay)
		}
		if in.Fired() != 1 {
			t.Errorf("fault fired %d times, want 1", in.Fired())
		}
	})

	t.Run("Rate", func(t *testing.T) {
		in := p.Inject(regtest.Status(http.StatusInternalServerError).Rate(0.5).Only(func(r *http.Request) bool {
			return r.URL.Path == "/v2/"
		}))
		defer in.Remove()
		client := &http.Client{Transport: &http.Transport{Proxy: nil}}
		var failed int
		const n = 40
		for range n {
			resp, err := client.Get(p.URL + "/v2/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusInternalServerError {
				failed++
			}
		}
		if failed == 0 || failed == n || int64(failed) != in.Fired() {
			t.Errorf("%d of %d requests failed, fault fired %d times; want some but not all, and equal", failed, n, in.Fired())
		}
	})

	// A Gate orders two requests sent at once: the ping is held until the
	// manifest GET has been answered.
	t.Run("HoldUntilOpenAfter", func(t *testing.T) {
		gate := regtest.NewGate()
		held := p.Inject(regtest.HoldUntil(gate).Only(func(r *http.Request) bool { return r.URL.Path == "/v2/" }))
		defer held.Remove()
		opener := p.Inject(regtest.OpenAfter(gate).Only(regtest.IsManifestGet))
		defer opener.Remove()
		client := &http.Client{Transport: &http.Transport{Proxy: nil}}
		pinged := make(chan error, 1)
		go func() {
			resp, err := client.Get(p.URL + "/v2/")
			if err == nil {
				resp.Body.Close()
			}
			pinged <- err
		}()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := held.Await(ctx, 1); err != nil {
			t.Fatalf("the ping never reached the proxy: %v", err)
		}
		select {
		case err := <-pinged:
			t.Fatalf("the ping was answered (%v) with the gate closed", err)
		default:
		}
		resp, err := client.Get(p.URL + "/v2/smoke/img/manifests/v1")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err := <-pinged; err != nil {
			t.Errorf("ping: %v", err)
		}
		if held.Fired() != 1 || opener.Fired() != 1 {
			t.Errorf("hold fired %d times, open %d times; want 1 and 1", held.Fired(), opener.Fired())
		}
	})

	// A request that arrived before a Reset counts before it, whatever its
	// handler does after: here, the whole blob written once the counts
	// were reset.
	t.Run("ResetWhileInFlight", func(t *testing.T) {
		gate := regtest.NewGate()
		in := p.Inject(regtest.HoldUntil(gate).Only(regtest.IsBlobGet).Only(regtest.HasDigest(big.String())))
		defer in.Remove()
		defer gate.Open()
		read := make(chan error, 1)
		go func() {
			_, err := readLayer(t, p, "smoke/img", big)
			read <- err
		}()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := in.Await(ctx, 1); err != nil {
			t.Fatalf("the blob GET never reached the proxy: %v", err)
		}
		p.Reset()
		gate.Open()
		if err := <-read; err != nil {
			t.Fatal(err)
		}
		if s := p.Stats(); s.BlobGets != 0 || s.BlobBytes != 0 {
			t.Errorf("stats %+v after a Reset while the blob GET was held; want it counted before the Reset, none after", s)
		}
	})

	t.Run("StopRestart", func(t *testing.T) {
		reg.Stop()
		if _, err := remote.Get(ref(t, reg.Addr+"/smoke/img:v1"), pullOptions(t)...); err == nil {
			t.Fatal("GET from a stopped registry succeeded")
		}
		if err := reg.Restart(); err != nil {
			t.Fatal(err)
		}
		got, err := remote.Image(ref(t, reg.Addr+"/smoke/img:v1"), pullOptions(t)...)
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := got.Digest(); d != wantDigest {
			t.Errorf("digest after restart %s, want %s", d, wantDigest)
		}
	})
}
