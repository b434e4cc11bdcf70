package integration_test

import (
	"testing"

	"github.com/ocibuild/layercache/pkg/store"
	"github.com/ocibuild/layercache/pkg/store/storetest"
)

// TestStoreConformance runs the store's conformance suite on stores in
// this module's temporary directories, by default and with WithDurable.
func TestStoreConformance(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts []store.Option
	}{
		{"default", nil},
		{"durable", []store.Option{store.WithDurable()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) *store.Store { return openStore(t, tc.opts...) })
		})
	}
}
