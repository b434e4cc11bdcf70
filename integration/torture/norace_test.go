//go:build !race

package torture_test

const raceEnabled = false
