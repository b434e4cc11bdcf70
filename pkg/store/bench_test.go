package store_test

import (
	"context"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

// benchSize is the blob of the benchmarks: a large layer.
const benchSize = 256 << 20

// benchStore opens a store holding the generated blob of benchSize.
func benchStore(b *testing.B) (*store.Store, digest.Digest) {
	b.Helper()
	s, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	d, err := s.Put(context.Background(), newGenReader(benchSize))
	if err != nil {
		b.Fatal(err)
	}
	return s, d
}

// BenchmarkOpenRead256MiB reads a blob through Open's verifying reader,
// which hashes as it serves.
func BenchmarkOpenRead256MiB(b *testing.B) {
	s, d := benchStore(b)
	ctx := context.Background()
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		r, err := s.Open(ctx, d)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, r); err != nil || n != benchSize {
			b.Fatalf("read: got (%d, %v), want %d bytes", n, err, benchSize)
		}
		r.Close()
	}
}

// BenchmarkOpenVerified256MiB hashes the whole blob, then serves it: two
// reads of the file, the second from the page cache.
func BenchmarkOpenVerified256MiB(b *testing.B) {
	s, d := benchStore(b)
	ctx := context.Background()
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		r, _, err := s.OpenVerified(ctx, d)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, r); err != nil || n != benchSize {
			b.Fatalf("read: got (%d, %v), want %d bytes", n, err, benchSize)
		}
		r.Close()
	}
}

func benchmarkPut(b *testing.B, opts ...store.Option) {
	s, err := store.Open(b.TempDir(), opts...)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(benchSize)
	for b.Loop() {
		if _, err := s.Put(ctx, newGenReader(benchSize)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPut256MiB writes a blob with the default policy (no fsync).
func BenchmarkPut256MiB(b *testing.B) { benchmarkPut(b) }

// BenchmarkPutDurable256MiB writes a blob with WithDurable (fsync of the
// file and of its directory).
func BenchmarkPutDurable256MiB(b *testing.B) { benchmarkPut(b, store.WithDurable()) }
