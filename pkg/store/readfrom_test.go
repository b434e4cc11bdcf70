package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/internal/layoutfs"
	"github.com/ocibuild/layercache/pkg/store"
)

// Writer.ReadFrom stores what it reads, whatever the sizes of the reads,
// and io.Copy into a Writer takes it.
func TestWriter_ReadFrom(t *testing.T) {
	data := make([]byte, 3<<20+12345)
	rand.New(rand.NewSource(7)).Read(data)
	d := digest.FromBytes(data)
	readers := map[string]func() io.Reader{
		"plain":   func() io.Reader { return bytes.NewReader(data) },
		"half":    func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
		"dataEOF": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) },
		"onlyRead": func() io.Reader {
			return struct{ io.Reader }{bytes.NewReader(data)} // no WriteTo: io.Copy must call ReadFrom
		},
	}
	for name, mk := range readers {
		t.Run(name, func(t *testing.T) {
			s := mustOpen(t, t.TempDir())
			w, err := s.NewWriter(context.Background(), d, int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			var n int64
			if name == "onlyRead" {
				n, err = io.Copy(w, mk())
			} else {
				n, err = w.ReadFrom(mk())
			}
			if err != nil || n != int64(len(data)) || w.Size() != n {
				t.Fatalf("ReadFrom: %d bytes (Size %d), %v; want %d, nil", n, w.Size(), err, len(data))
			}
			if got, err := w.Commit(); err != nil || got != d {
				t.Fatalf("Commit: %s, %v", got, err)
			}
			if got, err := s.Get(context.Background(), d); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Get after ReadFrom: %d bytes, %v", len(got), err)
			}
		})
	}
}

// ReadFrom refuses more than the expected size, returns its reader's
// errors, and neither lets a wrong blob be committed.
func TestWriter_ReadFromBadInput(t *testing.T) {
	data := bytes.Repeat([]byte("layer"), 200000)
	d := digest.FromBytes(data)
	ctx := context.Background()
	boom := errors.New("connection reset")
	tests := []struct {
		name    string
		size    int64
		r       io.Reader
		wantErr error // from ReadFrom
	}{
		{"longer than expected", int64(len(data)) - 1, bytes.NewReader(data), store.ErrDigestMismatch},
		{"reader fails", int64(len(data)), io.MultiReader(bytes.NewReader(data[:700000]), iotest.ErrReader(boom)), boom},
		{"short", int64(len(data)), bytes.NewReader(data[:1000]), nil},
		{"other bytes", int64(len(data)), bytes.NewReader(bytes.Repeat([]byte("LAYER"), 200000)), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := mustOpen(t, dir)
			w, err := s.NewWriter(ctx, d, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.ReadFrom(tc.r); !errors.Is(err, tc.wantErr) {
				t.Fatalf("ReadFrom: %v, want %v", err, tc.wantErr)
			}
			if _, err := w.Commit(); err == nil {
				t.Fatal("Commit of a wrong blob succeeded")
			}
			if _, err := s.Stat(ctx, d); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Stat after a failed commit: %v, want ErrNotFound", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(dir, layoutfs.IngestDir)); len(ents) > 0 {
				t.Errorf("ingest/ holds %d files after the failed commit", len(ents))
			}
		})
	}
}
