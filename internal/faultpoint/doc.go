// Package faultpoint marks the step boundaries of the cache's writes
// (temp file written, fsynced, renamed, lock held, ...) so that the torture
// suite (integration/torture) can kill a process at each of them and check
// what a crash there leaves behind.
//
// In normal builds Hit and HitBytes are empty functions that the compiler
// inlines away. Built with -tags layercache_faultpoint, they read the
// environment variable LAYERCACHE_KILL_AT once and send the process SIGKILL
// when it says so:
//
//	<step>            at the first Hit(<step>) or HitBytes(<step>, n)
//	<step>@<N>        at the N-th one
//	<step>+<K>        at the first HitBytes(<step>, n) with n >= K (a byte offset)
//	random:<seed>:<p> at each Hit or HitBytes with probability p, drawn from a
//	                  generator seeded with seed (so a run can be replayed)
//
// Before it kills, it writes one line to stderr, "faultpoint: SIGKILL at
// <step> (n=<n>)", so that the parent knows which step it covered.
//
// Step names are "<thing>:<step>", such as "blob:before-rename" or
// "index.json:after-rename"; grep for faultpoint.Hit to list them.
package faultpoint

// EnvVar names the environment variable that chooses where to kill.
const EnvVar = "LAYERCACHE_KILL_AT"
