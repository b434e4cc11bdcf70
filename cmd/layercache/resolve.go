package main

import (
	"github.com/spf13/pflag"

	"github.com/ocibuild/layercache/pkg/remotecache"
)

// resolveFlags say when a tag may come from the cache's index.json
// (--resolve); --offline is --resolve offline. warm and serve share them.
type resolveFlags struct {
	resolve string
	offline bool
}

// add binds the flags.
func (r *resolveFlags) add(f *pflag.FlagSet) {
	f.BoolVar(&r.offline, "offline", false, "use only the cache: resolve tags from index.json, fetch nothing (--resolve offline)")
	f.StringVar(&r.resolve, "resolve", remotecache.ResolveFallback.String(), "when a tag may come from the cache's index.json: remote, fallback or offline")
}

// policy checks the flags together and returns the policy they name; a
// bad policy, or --offline with another policy given, is a usage error.
func (r *resolveFlags) policy(f *pflag.FlagSet) (remotecache.ResolvePolicy, error) {
	policy, err := remotecache.ParseResolvePolicy(r.resolve)
	if err != nil {
		return 0, usagef("--resolve: %w", err)
	}
	if !r.offline {
		return policy, nil
	}
	if f.Changed("resolve") && policy != remotecache.ResolveOffline {
		return 0, usagef("--offline and --resolve %s exclude each other", policy)
	}
	return remotecache.ResolveOffline, nil
}
