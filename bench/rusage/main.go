// Command rusage runs a command and prints its peak RSS (ru_maxrss, in
// KiB, from wait4) on stdout; the command's own stdout goes to stderr. It
// exits with the command's exit status.
//
// The bench harness measures peak RSS through it because on Linux a child
// inherits its parent's high-water mark: exec records the RSS peak of the
// address space it replaces in the process's ru_maxrss, and Go starts
// children with vfork, so that address space is the parent's. Started from
// the harness (hundreds of MiB after building images), every child would
// report the harness's peak. Started from this program, a child reports
// max(its own peak, this program's ~2 MiB).
package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rusage COMMAND [ARG...]")
		os.Exit(2)
	}
	path, err := exec.LookPath(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "rusage:", err)
		os.Exit(127)
	}
	// syscall directly, not os/exec: less of this program's own memory
	// to leak into the child's figure.
	pid, err := syscall.ForkExec(path, os.Args[1:], &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 2, 2},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "rusage:", err)
		os.Exit(126)
	}
	var ws syscall.WaitStatus
	var ru syscall.Rusage
	for {
		_, err = syscall.Wait4(pid, &ws, 0, &ru)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rusage: wait4:", err)
		os.Exit(126)
	}
	fmt.Printf("%d\n", ru.Maxrss)
	os.Exit(ws.ExitStatus())
}
