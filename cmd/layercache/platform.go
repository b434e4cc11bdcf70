package main

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// platformFlags choose the images of an index that warm and check handle:
// one platform, or every one (attestation manifests only when asked).
type platformFlags struct {
	platform     string
	all          bool
	attestations bool
}

// add binds the flags; verb says what the command does with an image.
func (p *platformFlags) add(f *pflag.FlagSet, verb, preposition string) {
	f.StringVar(&p.platform, "platform", "", "platform to "+verb+" "+preposition+" an image index, os/arch[/variant] (default linux/amd64)")
	f.BoolVar(&p.all, "all-platforms", false, verb+" every platform of an image index")
	f.BoolVar(&p.attestations, "attestations", false, "with --all-platforms, "+verb+" the index's attestation manifests too")
}

// options checks the flags together and returns their remotecache options;
// a bad combination or platform is a usage error.
func (p *platformFlags) options() ([]remotecache.Option, error) {
	if p.platform != "" && p.all {
		return nil, usagef("--platform and --all-platforms exclude each other")
	}
	if p.attestations && !p.all {
		return nil, usagef("--attestations needs --all-platforms")
	}
	var opts []remotecache.Option
	if p.platform != "" {
		pl, err := v1.ParsePlatform(p.platform)
		if err != nil {
			return nil, usagef("--platform %q: %w", p.platform, err)
		}
		opts = append(opts, remotecache.WithPlatform(*pl))
	}
	if p.all {
		opts = append(opts, remotecache.WithAllPlatforms())
	}
	if p.attestations {
		opts = append(opts, remotecache.WithAttestations())
	}
	return opts, nil
}
