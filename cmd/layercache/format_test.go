package main

import "testing"

// TestPrintable checks which strings the tables print as they are and
// which they quote.
func TestPrintable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		why      string
	}{
		{"ghcr.io/a/b:1", "ghcr.io/a/b:1", "a plain ref prints as it is"},
		{"linux/arm64/v8", "linux/arm64/v8", "so does a platform"},
		{"", "", "and nothing"},
		{"café latte", "café latte", "printable non-ASCII letters and the ASCII space print as they are"},
		{"a\x1b[2Jb", `"a\x1b[2Jb"`, "ESC starts a terminal escape sequence"},
		{"a\u009b2Jb", `"a\u009b2Jb"`, "CSI (a C1 control) starts one in one rune"},
		{"a\x9b2Jb", `"a\x9b2Jb"`, "a lone 0x9b byte is CSI on terminals that are not UTF-8"},
		{"abc\u202egpj.exe", `"abc\u202egpj.exe"`, "a bidi override reverses what follows"},
		{"a\tb", `"a\tb"`, "a tab would shift a table's columns"},
		{"a\nb", `"a\nb"`, "a newline would make a second row"},
		{"a\x00b", `"a\x00b"`, "NUL"},
		{`"a"`, `"\"a\""`, "a leading quote would pass for a quoted string"},
		{`a"b`, `a"b`, "a quote inside is not ambiguous"},
	}
	for _, tc := range tests {
		if got := printable(tc.in); got != tc.want {
			t.Errorf("printable(%q) = %s, want %s: %s", tc.in, got, tc.want, tc.why)
		}
	}
}
