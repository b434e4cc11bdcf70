// Package torture is layercache's torture suite (issue 6): the cache is
// killed at every step boundary of its writes, hammered by eight processes
// at once, run on a full disk and on a read-only mount, fed hostile inputs,
// and served by a registry that fails one request in five.
//
// The tests live in this package's _test files; the processes they kill
// and run in parallel are the helper binary cmd/tortured, built by
// TestMain with -tags layercache_faultpoint so that the environment
// variable LAYERCACHE_KILL_AT (see internal/faultpoint) can stop it with
// SIGKILL at a chosen step. This file holds what the two share: the JSON
// the helper prints and the names of its operations.
//
// Run the short form with `go test ./torture` (it is part of `make test`)
// and the long one with `make torture` (-torture.duration=10m). Both end
// with a table: scenario, operations, faults injected, invariant
// violations, data lost.
package torture

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// Operations of `tortured op` and of the workers' random mix.
const (
	OpPut         = "put"         // store.Put of random bytes
	OpPutVerified = "putverified" // store.PutVerified of random bytes
	OpPull        = "pull"        // remotecache.Image, every layer read through
	OpWarm        = "warm"        // remotecache.Warm
	OpGet         = "get"         // store.Get / Open of a known digest
	OpInspect     = "inspect"     // store.Inspect of a known digest
	OpDelete      = "delete"      // store.Delete of a stored blob
	OpPrune       = "prune"       // store.Prune with a small size bound
	OpClear       = "clear"       // store.Clear
	OpTag         = "tag"         // store.Tag of a ref of one's own
	OpUntag       = "untag"       // store.Untag of a ref of one's own
)

// Result is the last line `tortured` prints on stdout, as JSON.
type Result struct {
	// Ops counts operations per kind; Errors counts their failures per
	// "kind/class" (see Classify).
	Ops    map[string]int `json:"ops"`
	Errors map[string]int `json:"errors"`
	// Faults counts faults the helper met on its own (a full disk, a
	// read-only mount).
	Faults int `json:"faults"`
	// Violations describes each broken invariant; there must be none.
	Violations []string `json:"violations"`
	// Refs is the final state of a worker's own refs, for the check of
	// lost updates.
	Refs []RefState `json:"refs,omitempty"`
	// LostUpdates counts refs a worker found missing or wrong right after
	// writing them, while no prune or clear ran.
	LostUpdates int `json:"lostUpdates"`
	// RefChecks counts the read-backs of ref writes that could tell a
	// lost update (no prune or clear ran meanwhile).
	RefChecks int `json:"refChecks"`
	// Skipped, when set, says why the scenario could not run here.
	Skipped string `json:"skipped,omitempty"`
	// Mode says how a scenario ran (tmpfs or RLIMIT_FSIZE, say).
	Mode string `json:"mode,omitempty"`
	// Notes are samples for people: an error message as a user sees it.
	Notes []string `json:"notes,omitempty"`
	// Digest is what `tortured op` stored or tagged, if anything.
	Digest string `json:"digest,omitempty"`
}

// RefState is the last thing a worker did to one of its refs.
type RefState struct {
	Name string `json:"name"`
	// Digest is what the ref was last tagged to, or "" if it was last
	// untagged.
	Digest string `json:"digest"`
	// Quiet is true when no prune or clear ran while the last write of
	// the ref happened, and Gen is the number of prunes and clears
	// started when it ended. If no prune or clear started after, the ref
	// must be in index.json as written.
	Quiet bool  `json:"quiet"`
	Gen   int64 `json:"gen"`
	// Unsure is set when the last write failed: its effect is unknown.
	Unsure bool `json:"unsure"`
}

// Add merges o's counts into r.
func (r *Result) Add(o Result) {
	if r.Ops == nil {
		r.Ops = map[string]int{}
	}
	if r.Errors == nil {
		r.Errors = map[string]int{}
	}
	for k, v := range o.Ops {
		r.Ops[k] += v
	}
	for k, v := range o.Errors {
		r.Errors[k] += v
	}
	r.Faults += o.Faults
	r.Violations = append(r.Violations, o.Violations...)
	r.LostUpdates += o.LostUpdates
	r.RefChecks += o.RefChecks
}

// TotalOps is the sum of Ops.
func (r *Result) TotalOps() int {
	n := 0
	for _, v := range r.Ops {
		n += v
	}
	return n
}

// Counts formats a count map as "a=1 b=2", sorted by key.
func Counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// Coordination files of a many-process run, in a directory the workers
// share. Each prune or clear appends one byte to StartsFile before it
// begins and one to EndsFile when it is over (O_APPEND writes are atomic),
// so the file sizes count them.
const (
	StartsFile = "destructive.starts"
	EndsFile   = "destructive.ends"
)

// Generation returns the size of the file name in dir: how many prunes and
// clears started (StartsFile) or ended (EndsFile).
func Generation(dir, name string) int64 {
	fi, err := os.Stat(dir + string(os.PathSeparator) + name)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Mark appends one byte to the file name in dir.
func Mark(dir, name string) error {
	f, err := os.OpenFile(dir+string(os.PathSeparator)+name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte{'.'})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
