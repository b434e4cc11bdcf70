package main

import (
	"os"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// Script commands that plant what a hostile or careless cache directory
// holds: old user files, and FIFOs restored from a CI cache's tar.

// cmdChtimes: chtimes AGE PATH... sets the access and modification times
// of each file or folder to AGE ago (a Go duration or a number of days
// such as 2d), without following a symlink's target.
func cmdChtimes(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: chtimes AGE PATH...")
	}
	age, err := parseAge(args[0])
	ts.Check(err)
	t := time.Now().Add(-age)
	for _, path := range args[1:] {
		ts.Check(os.Chtimes(ts.MkAbs(path), t, t))
	}
}

// cmdMkfifo: mkfifo PATH... makes a named pipe at each path. Opening one
// for reading blocks until a writer opens it, which nobody ever does here.
func cmdMkfifo(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: mkfifo PATH...")
	}
	for _, path := range args {
		ts.Check(syscall.Mkfifo(ts.MkAbs(path), 0o644))
	}
}
