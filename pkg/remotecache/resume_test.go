package remotecache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ocibuild/layercache/internal/testhook"
	"github.com/ocibuild/layercache/layout"
	"github.com/ocibuild/layercache/pkg/remotecache"
	"github.com/ocibuild/layercache/pkg/store"
)

// callCounter returns a func that numbers its calls from 0, safely from
// many goroutines.
func callCounter() func() int {
	var n atomic.Int64
	return func() int { return int(n.Add(1) - 1) }
}

// rangeStartOf is where the Range header of req starts, or 0.
func rangeStartOf(req *http.Request) int64 {
	spec, ok := strings.CutPrefix(req.Header.Get("Range"), "bytes=")
	if !ok {
		return 0
	}
	first, _, _ := strings.Cut(spec, "-")
	n, _ := strconv.ParseInt(first, 10, 64)
	return n
}

// cutWriter passes a response through until the body reaches limit bytes
// of the blob (counted from start), then drops the connection.
type cutWriter struct {
	http.ResponseWriter
	pos, limit int64
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if c.pos+int64(len(b)) > c.limit {
		b = b[:max(c.limit-c.pos, 0)]
		n, _ := c.ResponseWriter.Write(b)
		c.pos += int64(n)
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	n, err := c.ResponseWriter.Write(b)
	c.pos += int64(n)
	return n, err
}

// cutsAt serves the blob and drops the connection when the blob's bytes
// reach each point in turn (a fraction of size), one point per request;
// requests past the last point are served whole. answer, if set, answers
// the requests after the first itself, to play a registry that handles
// Range its own way.
func cutsAt(size int64, points []float64, answer func(w http.ResponseWriter, r *http.Request, next http.Handler) bool) fault {
	nextCall := callCounter()
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		call := nextCall()
		if call > 0 && answer != nil && answer(w, r, next) {
			return
		}
		if call >= len(points) {
			next.ServeHTTP(w, r)
			return
		}
		limit := int64(points[call] * float64(size))
		next.ServeHTTP(&cutWriter{ResponseWriter: w, pos: rangeStartOf(r), limit: limit}, r)
	}
}

// ignoreRange answers with the whole blob, 200, whatever the Range.
func ignoreRange(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
	r2 := r.Clone(r.Context())
	r2.Header.Del("Range")
	next.ServeHTTP(w, r2)
	return true
}

// wrongContentRange answers a Range request with the whole blob as a 206
// whose Content-Range starts at 0, as a broken CDN might: the download
// starts again from zero with that body.
func wrongContentRange(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
	if r.Header.Get("Range") == "" {
		return false
	}
	r2 := r.Clone(r.Context())
	r2.Header.Del("Range")
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r2)
	body := rec.Body.Bytes()
	w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(body)-1, len(body)))
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(body)
	return true
}

// elsewhereContentRange answers a Range request with a 206 that starts
// one byte before the asked-for offset: the client must not use it.
func elsewhereContentRange(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
	from := rangeStartOf(r)
	if from == 0 {
		return false
	}
	r2 := r.Clone(r.Context())
	r2.Header.Del("Range")
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r2)
	body := rec.Body.Bytes()[from-1:]
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from-1, rec.Body.Len()-1, rec.Body.Len()))
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(body)
	return true
}

// A download cut twice (at 30 % and 70 %) is resumed within the call with
// Range requests: the caller gets the right bytes, the blob is stored,
// and the registry serves little more than the layer once. A registry
// that ignores the Range, or answers it from the wrong place, makes the
// download start again from zero, cleanly.
func TestImage_ResumesCutDownload(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 81, 1, 4<<20))
	target := fx.layers[0]
	size := int64(len(fx.comp[target]))
	for _, tc := range []struct {
		name     string
		answer   func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
		maxBytes float64 // registry bytes ÷ layer bytes
	}{
		{"registry honours Range", nil, 1.1},
		{"registry ignores Range", ignoreRange, 1.4},
		{"Content-Range from zero", wrongContentRange, 1.4},
		{"Content-Range elsewhere", elsewhereContentRange, 2.4},
	} {
		for _, consumer := range []struct {
			name string
			read func(func() (io.ReadCloser, error)) ([]byte, error)
		}{{"Read", tryReadAll}, {"WriteTo", tryCopyAll}} {
			t.Run(tc.name+"/"+consumer.name, func(t *testing.T) {
				reg.reset()
				reg.setFault(target, cutsAt(size, []float64{0.3, 0.7}, tc.answer))
				s, _ := openStore(t)
				img := must(remotecache.Image(fx.ref, s, fast))
				l := must(img.LayerByDigest(target))
				got, err := consumer.read(l.Compressed)
				if err != nil {
					t.Fatalf("reading the layer: %v", err)
				}
				if !bytes.Equal(got, fx.comp[target]) {
					t.Fatal("wrong bytes")
				}
				assertStored(t, s, target)
				assertClean(t, s)
				if p := partials(t, s.Dir()); len(p) > 0 {
					t.Errorf("partial downloads left after the blob was stored: %v", p)
				}
				_, served := reg.totalBlobGets()
				if ratio := float64(served) / float64(size); ratio > tc.maxBytes {
					t.Errorf("the registry served %.2f× the layer, want at most %.2f×", ratio, tc.maxBytes)
				}
			})
		}
	}
}

// partialPath is where the store keeps the partial download of h.
func partialPath(dir string, h v1.Hash) string {
	return filepath.Join(dir, layout.IngestDir, h.Algorithm+"-"+h.Hex+".partial")
}

// hashStatePath is where the store keeps the hash state of the partial
// download of h.
func hashStatePath(dir string, h v1.Hash) string {
	return filepath.Join(dir, layout.IngestDir, h.Algorithm+"-"+h.Hex+".hashstate")
}

// hashStateOffset reads the offset a hash state was saved at: its third
// line (see store/hashstate.go).
func hashStateOffset(t *testing.T, dir string, h v1.Hash) int64 {
	t.Helper()
	b, err := os.ReadFile(hashStatePath(dir, h))
	if err != nil {
		t.Fatalf("no hash state beside the partial download: %v", err)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 3 {
		t.Fatalf("hash state %q: too short", b)
	}
	n, err := strconv.ParseInt(lines[2], 10, 64)
	if err != nil {
		t.Fatalf("hash state %q: %v", b, err)
	}
	return n
}

// A partial download left by a killed process is resumed by the next
// pull of the blob, which asks only for the rest; one whose bytes rotted
// on disk is fetched again from zero, and never stored or served as good.
// With a hash state saved beside the partial file, the resume hashes none
// of its bytes before it goes on; bytes that rotted before the state's
// offset fail the check that the commit waits for, and the blob is
// fetched again from zero in the same call.
func TestPull_ResumesPartialFromDisk(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 82, 1, 2<<20))
	target := fx.layers[0]
	whole := fx.comp[target]
	half := whole[:len(whole)/2]
	rotten := bytes.Clone(half)
	rotten[len(rotten)/3] ^= 0xff
	for _, tc := range []struct {
		name    string
		partial []byte
		state   bool // a hash state saved at the partial file's end (before it rotted)
		warm    bool
		wantErr bool // the caller got bytes that were wrong (and is told)
		// registry bytes ÷ layer bytes
		maxBytes float64
	}{
		{"good half/warm", half, false, true, false, 0.6},
		{"good half/pull", half, false, false, false, 0.6},
		{"rotten half/warm", rotten, false, true, false, 1.6},
		{"rotten half/pull", rotten, false, false, true, 1.6},
		{"good half, hash state/warm", half, true, true, false, 0.6},
		{"good half, hash state/pull", half, true, false, false, 0.6},
		{"rotten before the hash state/warm", rotten, true, true, false, 1.6},
		{"rotten before the hash state/pull", rotten, true, false, true, 1.6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg.reset()
			s, dir := openStore(t)
			if tc.state {
				// The state is saved from the good bytes, as a
				// download writes them; the file rots afterwards.
				w, err := s.OpenPartial(t.Context(), toDigest(target), int64(len(whole)))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := w.Write(half); err != nil {
					t.Fatal(err)
				}
				w.Close()
				if _, err := os.Stat(hashStatePath(dir, target)); err != nil {
					t.Fatalf("no hash state beside the partial file: %v", err)
				}
			}
			if err := os.WriteFile(partialPath(dir, target), tc.partial, 0o644); err != nil {
				t.Fatal(err)
			}
			var hashed atomic.Int64
			ctx := testhook.WithPrefixHashed(t.Context(), &hashed)
			if tc.warm {
				if _, err := remotecache.Warm(ctx, fx.ref, s); err != nil {
					t.Fatal(err)
				}
			} else {
				img := must(remotecache.Image(fx.ref, s, remotecache.WithContext(ctx)))
				l := must(img.LayerByDigest(target))
				got, err := tryReadAll(l.Compressed)
				switch {
				case tc.wantErr && !errors.Is(err, store.ErrDigestMismatch):
					t.Fatalf("reading the layer: %v, want ErrDigestMismatch", err)
				case !tc.wantErr && err != nil:
					t.Fatal(err)
				case !tc.wantErr && !bytes.Equal(got, whole):
					t.Fatal("wrong bytes")
				}
			}
			assertStored(t, s, target)
			if p := partials(t, dir); len(p) > 0 {
				t.Errorf("partial downloads left after the blob was stored: %v", p)
			}
			_, served := reg.totalBlobGets()
			if ratio := float64(served) / float64(len(whole)); ratio > tc.maxBytes {
				t.Errorf("the registry served %.2f× the layer, want at most %.2f×", ratio, tc.maxBytes)
			}
			want := int64(len(half)) // the whole partial file, before the download went on
			if tc.state {
				want = 0 // the state covers it all
			}
			if got := hashed.Load(); got != want {
				t.Errorf("the resume hashed %d bytes of the partial file before going on, want %d", got, want)
			}
		})
	}
}

// Processes pulling one cold image through ggcr's cache.Image and the
// Cache adapter at once download each blob once: the adapter's misses
// take the blob's lock, as every miss does.
func TestCache_CrossProcessDownloadsOnce(t *testing.T) {
	if ref := os.Getenv("LAYERCACHE_CACHE_CHILD"); ref != "" {
		cacheChild(t, ref, os.Getenv("LAYERCACHE_CACHE_DIR"))
		return
	}
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 83, 3, 1<<20))
	// Slow blobs, so that the processes overlap on every one.
	for _, h := range fx.layers {
		reg.setFault(h, delay(300*time.Millisecond))
	}
	_, dir := openStore(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([][]byte, n)
	for i := range n {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestCache_CrossProcessDownloadsOnce$", "-test.timeout=2m")
			cmd.Env = append(os.Environ(), "LAYERCACHE_CACHE_CHILD="+fx.ref.Name(), "LAYERCACHE_CACHE_DIR="+dir)
			outs[i], errs[i] = cmd.CombinedOutput()
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, outs[i])
		}
	}
	for _, h := range fx.layers {
		if got := reg.gets(h); got != 1 {
			t.Errorf("layer %s: %d GETs from %d processes, want 1", h, got, n)
		}
	}
}

// cacheChild pulls ref through cache.Image and the Cache adapter of the
// store at dir, reading every layer.
func cacheChild(t *testing.T, ref, dir string) {
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := must(name.ParseReference(ref))
	img, err := remote.Image(r, remote.WithContext(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	img = cache.Image(img, remotecache.Cache(s))
	for _, l := range must(img.Layers()) {
		readAll(t, l.Compressed)
	}
}

// The Transport and Warm resume a cut download within the call too.
func TestTransportAndWarm_ResumeCutDownload(t *testing.T) {
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 84, 1, 4<<20))
	target := fx.layers[0]
	size := int64(len(fx.comp[target]))
	for _, tc := range []struct {
		name string
		pull func(t *testing.T, s *store.Store)
	}{
		{"Transport", func(t *testing.T, s *store.Store) {
			img := must(remote.Image(fx.ref, remote.WithTransport(remotecache.Transport(s, nil))))
			l := must(img.LayerByDigest(target))
			if got := readAll(t, l.Compressed); !bytes.Equal(got, fx.comp[target]) {
				t.Fatal("wrong bytes")
			}
		}},
		{"Warm", func(t *testing.T, s *store.Store) {
			if _, err := remotecache.Warm(t.Context(), fx.ref, s); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg.reset()
			reg.setFault(target, cutsAt(size, []float64{0.3, 0.7}, nil))
			s, _ := openStore(t)
			tc.pull(t, s)
			assertStored(t, s, target)
			_, served := reg.totalBlobGets()
			if ratio := float64(served) / float64(size); ratio > 1.1 {
				t.Errorf("the registry served %.2f× the layer, want at most 1.1×", ratio)
			}
		})
	}
}

// stallAt serves the first GET of the blob up to frac of its size, then
// holds the connection open until the client goes away; later GETs are
// served whole.
func stallAt(size int64, frac float64) fault {
	nextCall := callCounter()
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		call := nextCall()
		if call > 0 {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		w.Header().Set("Content-Length", strconv.Itoa(rec.Body.Len()))
		w.WriteHeader(http.StatusOK)
		w.Write(rec.Body.Bytes()[:int64(frac*float64(size))])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Minute):
		}
	}
}

// A Warm killed (SIGKILL) halfway through a layer leaves its partial
// download, with the hash state it saved last beside it, and the next
// Warm, in another process, asks only for the rest, having hashed only
// the partial file's bytes past that state: the registry serves little
// more than the layer once in all, and the blob is stored whole.
func TestWarm_ResumesAfterKill(t *testing.T) {
	if ref := os.Getenv("LAYERCACHE_WARM_CHILD"); ref != "" {
		s, err := store.Open(os.Getenv("LAYERCACHE_CACHE_DIR"))
		if err != nil {
			t.Fatal(err)
		}
		// A state every MiB, so that the 4 MiB the child gets leave some.
		ctx := testhook.WithHashStateEvery(context.Background(), 1<<20)
		_, err = remotecache.Warm(ctx, must(name.ParseReference(ref)), s)
		t.Fatalf("Warm returned (%v); it should have been killed", err)
	}
	reg := newTestRegistry(t)
	fx := reg.pushImage(t, "test/img:v1", randomImage(t, 85, 1, 8<<20))
	target := fx.layers[0]
	size := int64(len(fx.comp[target]))
	reg.setFault(target, stallAt(size, 0.5))
	_, dir := openStore(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestWarm_ResumesAfterKill$", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), "LAYERCACHE_WARM_CHILD="+fx.ref.Name(), "LAYERCACHE_CACHE_DIR="+dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the child's partial download holds 40 % of the layer
	// (it gets 50 %, and writes it in 256 KiB chunks), then kill it.
	partial := partialPath(dir, target)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if fi, err := os.Stat(partial); err == nil && fi.Size() >= size*4/10 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("the child's partial download never reached 40 %% of the layer\n%s", out.String())
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	fi, err := os.Stat(partial)
	if err != nil {
		t.Fatal(err)
	}
	saved := hashStateOffset(t, dir, target)
	if saved <= 0 || saved > fi.Size() {
		t.Fatalf("the killed child's hash state is at %d, want within its partial file's %d bytes", saved, fi.Size())
	}
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var hashed atomic.Int64
	if _, err := remotecache.Warm(testhook.WithPrefixHashed(t.Context(), &hashed), fx.ref, s); err != nil {
		t.Fatal(err)
	}
	assertStored(t, s, target)
	if got, want := hashed.Load(), fi.Size()-saved; got != want {
		t.Errorf("the resume hashed %d bytes of the %d-byte partial file before going on, want %d (past the state at %d)",
			got, fi.Size(), want, saved)
	}
	if p := partials(t, dir); len(p) > 0 {
		t.Errorf("partial downloads left after the blob was stored: %v", p)
	}
	if n := reg.gets(target); n != 2 {
		t.Errorf("%d GETs of the layer, want 2 (the killed one and the resume)", n)
	}
	_, served := reg.totalBlobGets()
	if ratio := float64(served) / float64(size); ratio > 1.15 {
		t.Errorf("the registry served %.2f× the layer over the kill, want at most 1.15×", ratio)
	}
}
