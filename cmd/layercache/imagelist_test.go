package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestParseImageList checks what a line of an image list holds, and that
// each line keeps its ending, which pin writes back.
func TestParseImageList(t *testing.T) {
	tests := []struct {
		why  string
		text string
		refs []string // the reference of each line, "" for none
		bad  string   // a usage error containing this, if set
	}{
		{why: "one a line", text: "a:1\nb:2\n", refs: []string{"a:1", "b:2"}},
		{why: "blank lines and blanks around a reference", text: "\n  a:1\t\n\t\n", refs: []string{"", "a:1", ""}},
		{why: "a whole-line comment, also after blanks", text: "# base\n   # indented\n", refs: []string{"", ""}},
		{why: "a comment after a blank or a tab", text: "a:1 # why\nb:2\t#why\n", refs: []string{"a:1", "b:2"}},
		{why: "a # glued to a reference is part of it, for the parser to refuse", text: "a:1#x\n", refs: []string{"a:1#x"}},
		{why: "no newline at the end", text: "a:1", refs: []string{"a:1"}},
		{why: "CRLF line endings", text: "a:1\r\n# c\r\n", refs: []string{"a:1", ""}},
		{why: "nothing", text: "", refs: nil},
		{why: "two words", text: "# ok\na:1 b:2\n", bad: `x:2: "a:1 b:2" holds more than one word`},
		{why: "a line too long to be a reference", text: strings.Repeat("a", maxListLine+1), bad: "x:1: line longer than"},
	}
	for _, tc := range tests {
		lines, err := parseImageList("x", strings.NewReader(tc.text))
		if tc.bad != "" {
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("%s: error %v, want a usage error containing %q", tc.why, err, tc.bad)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.why, err)
			continue
		}
		var refs []string
		var back strings.Builder
		for _, l := range lines {
			refs = append(refs, l.ref())
			back.WriteString(l.text + l.eol)
		}
		if !slices.Equal(refs, tc.refs) {
			t.Errorf("%s: refs %q, want %q", tc.why, refs, tc.refs)
		}
		if back.String() != tc.text {
			t.Errorf("%s: lines put back together give %q, want %q", tc.why, back.String(), tc.text)
		}
	}
}

// TestHasTag checks how pin tells "repo:tag" from "repo", which means
// repo:latest, when a registry's port holds a colon too.
func TestHasTag(t *testing.T) {
	for ref, want := range map[string]bool{
		"alpine":                     false,
		"alpine:3.19":                true,
		"localhost:5000/app":         false, // the colon is the port's
		"localhost:5000/app:v1":      true,
		"ghcr.io/org/app":            false,
		"registry.example/a/b/c:tag": true,
	} {
		if got := hasTag(ref); got != want {
			t.Errorf("hasTag(%q) = %v, want %v", ref, got, want)
		}
	}
}
