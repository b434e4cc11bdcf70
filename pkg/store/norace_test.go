//go:build !race

package store_test

// raceEnabled says the race detector is on; heavy tests use smaller sizes.
const raceEnabled = false
