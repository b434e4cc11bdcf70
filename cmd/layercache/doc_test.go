package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

//go:generate go test -run ^TestReferenceDocs$ -update

// docDir holds the command reference, generated from the commands' own
// help with cobra/doc, as crane does for cmd/crane/doc.
const docDir = "../../docs/cli"

// TestReferenceDocs fails when docs/cli no longer matches the commands'
// help, so the checked-in reference cannot go stale. `go generate
// ./cmd/layercache` (or this test with -update) rewrites it.
func TestReferenceDocs(t *testing.T) {
	root := newRootCmd(&globals{})
	root.DisableAutoGenTag = true // no date line: the output must be stable
	var walk func(*cobra.Command)
	want := map[string][]byte{}
	walk = func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c != root {
			return
		}
		var b bytes.Buffer
		c.DisableAutoGenTag = true
		if err := doc.GenMarkdown(c, &b); err != nil {
			t.Fatal(err)
		}
		want[strings.ReplaceAll(c.CommandPath(), " ", "_")+".md"] = b.Bytes()
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if *update {
		if err := os.RemoveAll(docDir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(docDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range want {
			if err := os.WriteFile(filepath.Join(docDir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	entries, err := os.ReadDir(docDir)
	if err != nil {
		t.Fatalf("%v (run `go generate ./cmd/layercache`)", err)
	}
	if len(entries) != len(want) {
		t.Errorf("%s has %d files, the commands make %d (run `go generate ./cmd/layercache`)", docDir, len(entries), len(want))
	}
	for name, b := range want {
		got, err := os.ReadFile(filepath.Join(docDir, name))
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s is stale (run `go generate ./cmd/layercache`)", filepath.Join(docDir, name))
		}
	}
}
