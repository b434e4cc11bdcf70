//go:build !race

package remotecache_test

// bombSize is how many zeros TestFormats_GzipBombStreams expands.
const bombSize = 1 << 30
