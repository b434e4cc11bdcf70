package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/testutil"
	"github.com/ocibuild/layercache/pkg/store"
)

// readSmall reads r to the end with small reads and reports whether any
// Read returned io.EOF, and the first other error.
func readSmall(r io.Reader) (data []byte, sawEOF bool, err error) {
	buf := make([]byte, 32<<10)
	for i := 0; ; i++ {
		n, err := r.Read(buf)
		data = append(data, buf[:n]...)
		if err == io.EOF {
			return data, true, nil
		}
		if err != nil {
			return data, false, err
		}
		if i > 1<<20 {
			return data, false, errors.New("reader never ends")
		}
	}
}

func testOpen(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	for i, size := range []int{0, 1, 4096, largeSize} {
		t.Run(fmt.Sprint(size, " bytes"), func(t *testing.T) {
			data := Blob(uint64(10+i), size)
			d := mustPut(t, s, data)

			r, err := s.Open(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(r, data); err != nil {
				t.Errorf("iotest.TestReader: %v", err)
			}
			// After the end, the reader keeps returning io.EOF.
			if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Errorf("Read after the end: got (%d, %v), want (0, io.EOF)", n, err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}

			// io.Copy takes the reader's WriteTo.
			r, err = s.Open(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if n, err := io.Copy(&buf, r); err != nil || n != int64(size) || !bytes.Equal(buf.Bytes(), data) {
				t.Errorf("io.Copy: got (%d, %v), want (%d, nil) and the same bytes", n, err, size)
			}
			r.Close()

			// A reader closed early has verified nothing and harms nothing.
			r, err = s.Open(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			r.Read(make([]byte, 1))
			r.Close()
			assertBlob(t, s, d, data)
		})
	}
}

func testOpenVerified(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	for i, size := range []int{0, 1, largeSize} {
		t.Run(fmt.Sprint(size, " bytes"), func(t *testing.T) {
			data := Blob(uint64(20+i), size)
			d := mustPut(t, s, data)
			r, info, err := s.OpenVerified(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			if info.Digest != d || info.Size != int64(size) || info.LastUsed.IsZero() {
				t.Errorf("Info: got %+v, want digest %s size %d and a last use", info, d, size)
			}
			if err := iotest.TestReader(r, data); err != nil {
				t.Errorf("iotest.TestReader: %v", err)
			}
			r.Close()

			r, _, err = s.OpenVerified(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if n, err := io.Copy(&buf, r); err != nil || n != int64(size) || !bytes.Equal(buf.Bytes(), data) {
				t.Errorf("io.Copy: got (%d, %v), want (%d, nil) and the same bytes", n, err, size)
			}
			r.Close()
		})
	}
}

func testNotFound(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, []byte("another blob"))
	d := digest.FromString("never stored")
	before := testutil.Snapshot(t, s.Dir())
	for _, c := range digestCalls(s) {
		if c.name == "PutVerified" || c.name == "NewWriter" || c.name == "Tag" || c.name == "layout.BlobPath" {
			continue
		}
		if err := c.call(ctx, d); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s of a missing blob: got %v, want ErrNotFound", c.name, err)
		} else if !strings.Contains(err.Error(), string(d)) {
			t.Errorf("%s of a missing blob: got %q, want the digest named", c.name, err)
		}
	}
	testutil.AssertUnchanged(t, s.Dir(), before)
}

func testStat(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	data := Blob(30, 12345)
	start := time.Now().Add(-time.Second)
	d := mustPut(t, s, data)
	info, err := s.Stat(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != d || info.Size != int64(len(data)) {
		t.Errorf("Stat: got %+v, want digest %s size %d", info, d, len(data))
	}
	if info.LastUsed.Before(start) || info.LastUsed.After(time.Now().Add(time.Second)) {
		t.Errorf("Stat: LastUsed %v, want about now", info.LastUsed)
	}
}

func testVerify(t *testing.T, open func(t *testing.T) *store.Store) {
	s := open(t)
	ctx := t.Context()
	data := Blob(60, largeSize)
	d := mustPut(t, s, data)
	info, err := s.Stat(ctx, d, store.VerifyFirst)
	if err != nil {
		t.Fatalf("Verify of a good blob: %v", err)
	}
	if info.Digest != d || info.Size != int64(len(data)) {
		t.Errorf("Verify: got %+v, want digest %s size %d", info, d, len(data))
	}
	// Corrupted: reported, and left in place for the caller.
	bad := bytes.Clone(data)
	bad[0] ^= 1
	replaceFile(t, blobPath(t, s, d), bad)
	if _, err := s.Stat(ctx, d, store.VerifyFirst); !errors.Is(err, store.ErrCorrupted) {
		t.Errorf("Verify of a corrupted blob: got %v, want ErrCorrupted", err)
	}
	if b, err := os.ReadFile(blobPath(t, s, d)); err != nil || !bytes.Equal(b, bad) {
		t.Errorf("Verify removed or changed the corrupted file (%v)", err)
	}
}

// testLastUsed checks, with the real clock, that reads refresh a blob's
// last use only when it is older than an hour, and that Stat and Verify
// never do.
func testLastUsed(t *testing.T, open func(t *testing.T) *store.Store) {
	ctx := t.Context()
	reads := []struct {
		name    string
		read    func(s *store.Store, d digest.Digest) error
		refresh bool
	}{
		{"Open", func(s *store.Store, d digest.Digest) error {
			r, err := s.Open(ctx, d)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(io.Discard, r)
			return err
		}, true},
		{"Get", func(s *store.Store, d digest.Digest) error { _, err := s.Get(ctx, d); return err }, true},
		{"OpenVerified", func(s *store.Store, d digest.Digest) error {
			r, _, err := s.OpenVerified(ctx, d)
			if err == nil {
				r.Close()
			}
			return err
		}, true},
		{"Verify", func(s *store.Store, d digest.Digest) error { _, err := s.Stat(ctx, d, store.VerifyFirst); return err }, false},
		{"Stat", func(s *store.Store, d digest.Digest) error { _, err := s.Stat(ctx, d); return err }, false},
	}
	s := open(t)
	for i, rd := range reads {
		t.Run(rd.name, func(t *testing.T) {
			d := mustPut(t, s, Blob(uint64(70+i), 100))
			path := blobPath(t, s, d)

			recent := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
			setTime(t, path, recent)
			if err := rd.read(s, d); err != nil {
				t.Fatal(err)
			}
			if got := mtime(t, path); !got.Equal(recent) {
				t.Errorf("read 30 min after last use: mtime got %v, want %v (unchanged)", got, recent)
			}

			old := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
			setTime(t, path, old)
			start := time.Now().Add(-time.Second)
			if err := rd.read(s, d); err != nil {
				t.Fatal(err)
			}
			got := mtime(t, path)
			if rd.refresh && got.Before(start) {
				t.Errorf("read 2 h after last use: mtime got %v, want about now", got)
			}
			if !rd.refresh && !got.Equal(old) {
				t.Errorf("%s changed the last use: mtime got %v, want %v", rd.name, got, old)
			}
		})
	}
}
