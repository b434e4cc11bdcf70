package store_test

import (
	"testing"

	"github.com/ocibuild/layercache/pkg/store"
	"github.com/ocibuild/layercache/pkg/store/storetest"
)

// openIn returns a function that opens a new store in a fresh directory
// with opts, for storetest.Run.
func openIn(opts ...store.Option) func(t *testing.T) *store.Store {
	return func(t *testing.T) *store.Store {
		t.Helper()
		s, err := store.Open(t.TempDir(), opts...)
		if err != nil {
			t.Fatalf("store.Open: %v", err)
		}
		return s
	}
}

// TestConformance runs the conformance suite on every configuration: the
// durable mode keeps the same contract as the default one.
func TestConformance(t *testing.T) {
	configs := []struct {
		name string
		opts []store.Option
	}{
		{"default", nil},
		{"durable", []store.Option{store.WithDurable()}},
	}
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			storetest.Run(t, openIn(c.opts...))
		})
	}
}
