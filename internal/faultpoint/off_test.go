//go:build !layercache_faultpoint

package faultpoint

import "testing"

// In normal builds nothing kills, whatever the environment says.
func TestDisabled(t *testing.T) {
	t.Setenv(EnvVar, "x:step")
	Hit("x:step")
	HitBytes("x:step", 1)
	if Enabled {
		t.Error("Enabled in a build without the layercache_faultpoint tag")
	}
}
