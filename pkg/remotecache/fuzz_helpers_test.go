package remotecache_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// fzTar returns a tar holding one file with content.
func fzTar(tb testing.TB, content string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		tb.Fatal(err)
	}
	tw.Write([]byte(content))
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func fzTarDigest(tb testing.TB, content string) string {
	return digest.FromBytes(fzTar(tb, content)).String()
}

func fzGzipTar(tb testing.TB, content string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(fzTar(tb, content))
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func fzZstdTar(tb testing.TB, content string) []byte {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		tb.Fatal(err)
	}
	zw.Write(fzTar(tb, content))
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}
