// Package examples holds small runnable programs that show how
// image-building tools embed layercache. Each is a main package meant to be
// read and copied:
//
//   - append: crane-style. Pulls a base image through the cache, appends a
//     directory as a layer, pushes the result and writes it to an OCI
//     image layout.
//   - kolike: ko-like. Builds a Go program, puts the binary at
//     /ko-app/hello on a cached base, sets the entrypoint and pushes.
//
// Both run with no network: -serve starts go-containerregistry's registry
// inside the process and pushes a deterministic synthetic base to it.
//
//	go run ./examples/append -serve
//	go run ./examples/kolike -serve
//
// Run either twice with the same cache and the second run reads every
// base blob from the cache: "base blobs from registry: 0 bytes".
// examples_test.go checks exactly that, by running each program twice.
//
// The internal packages are scaffolding for the examples (the in-process
// registry, a byte-counting transport), not part of layercache.
package examples
