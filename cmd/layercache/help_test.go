package main

import (
	"strings"
	"testing"
)

// TestHelpEveryCommand runs `layercache CMD --help` for every command the
// root has, so a new command is covered without a new script line: exit 0,
// its Use line in the usage, a short description, nothing on stderr.
func TestHelpEveryCommand(t *testing.T) {
	t.Parallel()
	root := newRootCmd(&globals{})
	cmds := root.Commands()
	if len(cmds) < 11 {
		t.Fatalf("root has %d commands, want at least 11", len(cmds))
	}
	for _, c := range cmds {
		t.Run(c.Name(), func(t *testing.T) {
			t.Parallel()
			if c.Short == "" {
				t.Errorf("%s has no Short description", c.Name())
			}
			for _, args := range [][]string{{c.Name(), "--help"}, {"help", c.Name()}} {
				code, stdout, stderr := runCLI(t, "", args...)
				if code != exitOK {
					t.Errorf("layercache %s: exit %d, want 0", strings.Join(args, " "), code)
				}
				if want := "\n  layercache " + c.Use + " [flags]\n"; !strings.Contains(stdout, want) {
					t.Errorf("layercache %s: usage lacks %q:\n%s", strings.Join(args, " "), want, stdout)
				}
				if stderr != "" {
					t.Errorf("layercache %s: stderr = %q", strings.Join(args, " "), stderr)
				}
			}
		})
	}
}
