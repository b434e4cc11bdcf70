// Package testutil holds the helpers that the tests of layout, pkg/store
// and storetest share: a runner of the test binary as a child process, a
// snapshot of a directory tree to show that an operation changed nothing,
// the table of invalid digests, and small file helpers. It is for tests
// only; nothing in the library imports it.
package testutil
