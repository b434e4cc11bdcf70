package store

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// t0 is the test clock's start: a fixed time, so that mtimes in failures
// are readable and nothing depends on the machine's clock.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is a settable time source for Store.now.
type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }

// newTestStore opens a store in a fresh directory whose clock is c, set
// to t0.
func newTestStore(t *testing.T, opts ...Option) (*Store, *clock) {
	t.Helper()
	s, err := Open(t.TempDir(), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	c := &clock{t: t0}
	s.now = c.now
	return s, c
}

func put(t *testing.T, s *Store, data []byte) digest.Digest {
	t.Helper()
	d, err := s.Put(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return d
}

func blobMtime(t *testing.T, s *Store, d digest.Digest) time.Time {
	t.Helper()
	path, err := s.path.BlobPath(d)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

func TestPut_LastUsedIsNow(t *testing.T) {
	s, _ := newTestStore(t)
	d := put(t, s, []byte("blob"))
	if got := blobMtime(t, s, d); !got.Equal(t0) {
		t.Errorf("mtime after Put: got %v, want %v", got, t0)
	}
	info, err := s.Stat(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	if !info.LastUsed.Equal(t0) {
		t.Errorf("Stat LastUsed: got %v, want %v", info.LastUsed, t0)
	}
}

// TestRead_RefreshesLastUse steps the store's clock instead of sleeping:
// a read refreshes the blob's last use only once it is more than an hour
// old, so that reads do not turn into writes.
func TestRead_RefreshesLastUse(t *testing.T) {
	ctx := context.Background()
	reads := []struct {
		name    string
		read    func(s *Store, d digest.Digest) error
		refresh bool
	}{
		{"Open", func(s *Store, d digest.Digest) error {
			r, err := s.Open(ctx, d)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(io.Discard, r)
			return err
		}, true},
		{"Get", func(s *Store, d digest.Digest) error { _, err := s.Get(ctx, d); return err }, true},
		{"OpenVerified", func(s *Store, d digest.Digest) error {
			r, _, err := s.OpenVerified(ctx, d)
			if err == nil {
				r.Close()
			}
			return err
		}, true},
		{"Verify", func(s *Store, d digest.Digest) error { _, err := s.Stat(ctx, d, VerifyFirst); return err }, false},
		{"Stat", func(s *Store, d digest.Digest) error { _, err := s.Stat(ctx, d); return err }, false},
		{"Walk", func(s *Store, d digest.Digest) error { return s.Walk(ctx, func(Info) error { return nil }) }, false},
	}
	steps := []struct {
		after  time.Duration
		reason string
		// refreshed says whether a refreshing read moves the mtime.
		refreshed bool
	}{
		{time.Minute, "a minute after the write", false},
		{59 * time.Minute, "within the hour", false},
		{time.Hour, "exactly an hour: not yet more than lastUseInterval", false},
		{time.Hour + time.Second, "just over an hour", true},
		{30 * 24 * time.Hour, "a month later", true},
	}
	for _, rd := range reads {
		for _, st := range steps {
			t.Run(rd.name+"/"+st.reason, func(t *testing.T) {
				s, c := newTestStore(t)
				d := put(t, s, []byte("blob of "+rd.name))
				c.add(st.after)
				if err := rd.read(s, d); err != nil {
					t.Fatal(err)
				}
				want := t0
				if rd.refresh && st.refreshed {
					want = c.now()
				}
				if got := blobMtime(t, s, d); !got.Equal(want) {
					t.Errorf("mtime: got %v, want %v", got, want)
				}
			})
		}
	}
}

// TestRead_RefreshIsHourly checks that after a refresh, the next hour of
// reads leaves the mtime alone again.
func TestRead_RefreshIsHourly(t *testing.T) {
	s, c := newTestStore(t)
	ctx := context.Background()
	d := put(t, s, []byte("blob"))
	c.add(2 * time.Hour)
	if _, err := s.Get(ctx, d); err != nil {
		t.Fatal(err)
	}
	refreshed := c.now()
	c.add(30 * time.Minute)
	if _, err := s.Get(ctx, d); err != nil {
		t.Fatal(err)
	}
	if got := blobMtime(t, s, d); !got.Equal(refreshed) {
		t.Errorf("mtime 30 min after a refresh: got %v, want %v", got, refreshed)
	}
}
