//go:build race

package remotecache_test

// bombSize is how many zeros TestFormats_GzipBombStreams expands: under
// the race detector, whose instrumented decoder is about twenty times
// slower, less, still well past the heap growth the test allows.
const bombSize = 128 << 20
