//go:build layercache_faultpoint

package faultpoint

import "testing"

func TestParse(t *testing.T) {
	tests := []struct {
		in     string
		step   string
		nth    int64
		offset int64
		random bool
	}{
		{"blob:before-rename", "blob:before-rename", 1, -1, false},
		{"prune:evicted@3", "prune:evicted", 3, -1, false},
		{"blob:bytes+4096", "blob:bytes", 1, 4096, false},
		{"random:7:0.25", "", 0, -1, true},
	}
	for _, tc := range tests {
		p, err := parse(tc.in)
		if err != nil {
			t.Fatalf("parse(%q): %v", tc.in, err)
		}
		if p.step != tc.step || p.nth != tc.nth || p.offset != tc.offset || (p.rng != nil) != tc.random {
			t.Errorf("parse(%q) = %+v", tc.in, p)
		}
	}
	for _, bad := range []string{"random:x:0.1", "random:1", "random:1:2", "a@0", "a@x", "a+-1"} {
		if _, err := parse(bad); err == nil {
			t.Errorf("parse(%q): no error", bad)
		}
	}
}
