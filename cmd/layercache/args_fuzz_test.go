package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocibuild/layercache/pkg/store"
)

// FuzzCommandLine passes arbitrary digests to `cat` and references to
// `warm --offline` (so nothing leaves the machine): the command never
// panics, exits 0 only for the one stored blob, and otherwise prints
// nothing on stdout and one line on stderr, and no file appears outside
// the cache directory, whatever path tricks the argument holds.
func FuzzCommandLine(f *testing.F) {
	blob := []byte("a stored blob")
	stored := digest.FromBytes(blob)
	for _, s := range []string{
		stored.String(), "sha256:../../etc/passwd", "sha256:" + strings.Repeat("A", 64), "sha512:00",
		"md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:" + strings.Repeat("0", 64) + "/..", "",
		"-", "--help", "registry.example/app:v1", "localhost:5000/x@" + stored.String(),
		"UPPER/case:tag", "a/../../b:1", "x@sha256:../../../etc", "\x00", "reg.invalid:99999/a:b",
	} {
		f.Add(s)
	}
	root := f.TempDir()
	dir := filepath.Join(root, "cache")
	s, err := store.Open(dir)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := s.Put(context.Background(), bytes.NewReader(blob)); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		for _, args := range [][]string{
			{"--cache-dir", dir, "cat", arg},
			{"--cache-dir", dir, "warm", "--offline", arg},
		} {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), args, strings.NewReader(""), &stdout, &stderr)
			if code == exitOK {
				if args[2] == "cat" && arg == stored.String() && bytes.Equal(stdout.Bytes(), blob) {
					continue
				}
				if strings.HasPrefix(arg, "-") {
					continue // a flag such as --help
				}
				t.Fatalf("%q: exit 0, stdout %q, stderr %q", args, stdout.String(), stderr.String())
			}
			if code != exitFail && code != exitUsage {
				t.Fatalf("%q: exit %d, want 1 or 2", args, code)
			}
			if args[2] == "cat" && stdout.Len() > 0 {
				t.Fatalf("%q: failed with %q on stdout", args, stdout.String())
			}
			if n := strings.Count(strings.TrimSuffix(stderr.String(), "\n"), "\n"); n != 0 || stderr.Len() == 0 {
				t.Fatalf("%q: stderr has %d lines, want one: %q", args, n+1, stderr.String())
			}
		}
		entries, err := os.ReadDir(root)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != "cache" {
			t.Fatalf("%q: files appeared beside the cache: %v", arg, entries)
		}
	})
}
