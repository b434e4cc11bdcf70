// Package regtest is the harness of layercache's end-to-end tests: a real
// registry process, a fault-injecting proxy in front of it, and synthetic
// images to push into it.
//
// It is an ordinary (non-test) package so that tests, benchmarks and
// examples in the integration module can share it.
//
//   - [Build] compiles the CNCF distribution registry (the version pinned by
//     the tool directive in integration/go.mod) once, into a per-user cache,
//     and [Start] runs it as a child process on 127.0.0.1 with filesystem
//     storage in a test's temporary directory; with [Mirrors], as a
//     pull-through cache of another registry (the registry's proxy mode).
//   - [NewProxy] puts a counting reverse proxy in front of it. [Fault]s make
//     that proxy answer with an error status, cut a body short, flip a byte,
//     rewrite a JSON document or add latency, on chosen requests only;
//     [Observe] shows a test the requests as they arrive.
//   - [PushImage] and [PushIndex] push images with random layers, built by
//     [RandomLayer], [RandomImage] and [RandomIndex].
//
// Everything here talks only to 127.0.0.1.
package regtest
