// Package storetest is the conformance suite of package store: the contract
// of a Store that holds whatever its options, checked from outside through
// the exported API and the files of its directory.
//
// pkg/store runs it on the default store and on WithDurable(); the
// integration module runs it on stores in its own settings. It is modelled
// on containerd's content testsuite (ContentSuite).
package storetest

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/ocibuild/layercache/pkg/store"
)

// Run runs the suite. open must return a new, empty store in a directory
// of its own (t.TempDir()) each time it is called; Run calls it at least
// once per subtest and never closes or removes what it returns.
func Run(t *testing.T, open func(t *testing.T) *store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func(t *testing.T) *store.Store)
	}{
		{"Put", testPut},
		{"Put_Twice", testPutTwice},
		{"Put_ReaderError", testPutReaderError},
		{"PutVerified", testPutVerified},
		{"PutVerified_AlreadyStored", testPutVerifiedAlreadyStored},
		{"Writer", testWriter},
		{"Open", testOpen},
		{"OpenVerified", testOpenVerified},
		{"NotFound", testNotFound},
		{"Stat", testStat},
		{"Delete", testDelete},
		{"Delete_WhileReading", testDeleteWhileReading},
		{"ChangedWhileReading", testChangedWhileReading},
		{"Walk", testWalk},
		{"Clear", testClear},
		{"Verify", testVerify},
		{"LastUsed", testLastUsed},
		{"Corruption", testCorruption},
		{"InvalidDigest", testInvalidDigest},
		{"CancelledContext", testCancelledContext},
		{"Concurrent", testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// Blob returns n bytes of deterministic pseudo-random data, different for
// each seed.
func Blob(seed uint64, n int) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// largeSize crosses the store's read buffer and its read-ahead threshold,
// so that reads and writes take several rounds and a partial last one.
const largeSize = 1<<20 + 1<<19 + 3
