package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/ocibuild/layercache/pkg/hostsconf"
	"github.com/ocibuild/layercache/pkg/remotecache"
)

// mirrorsEnv holds mirrors as --mirror takes them, comma-separated; it is
// read only when no --mirror flag is given.
const mirrorsEnv = "LAYERCACHE_MIRRORS"

// mirrorOpts are the mirror flags of a command that pulls (addMirrorFlags).
type mirrorOpts struct {
	mirrors  []string // --mirror, in the order given
	hostsDir string   // --hosts-dir
}

// mirrorHelp is added to the long help of every command that pulls.
const mirrorHelp = `

Mirrors: a pull tries the mirrors of the image's registry in order, then the
registry itself. A mirror that cannot be reached, or answers 404, 429 or a
5xx, is passed over with a warning; its bytes are verified like any other.
--mirror REGISTRY=URL (repeatable, tried in the order given) adds a mirror
that serves blobs and manifests by digest, not tags. REGISTRY docker.io also
matches references written without a registry. $` + mirrorsEnv + ` holds
REGISTRY=URL items separated by commas, and is used only when no --mirror
is given. --hosts-dir DIR reads containerd's hosts.toml layout,
DIR/<registry>/hosts.toml (DIR/_default/hosts.toml for a registry without a
directory of its own): its hosts, in the file's order, come after the
mirrors of --mirror or $` + mirrorsEnv + `, and a host with the "resolve"
capability resolves tags too. A malformed mirror or hosts.toml is a usage
error naming the flag, variable or file; nothing is skipped silently.`

// mirrorExample is added to the examples of every command that pulls.
const mirrorExample = `

  # Through a pull-through mirror of Docker Hub, then Docker Hub itself
  layercache warm --mirror docker.io=http://mirror.internal:5000 golang:1.26

  # Through the mirrors that containerd's hosts.toml files configure
  layercache warm --hosts-dir /etc/containerd/certs.d golang:1.26`

// addMirrorFlags adds --mirror and --hosts-dir to cmd, a command that
// pulls, and says how mirrors work in its help.
func addMirrorFlags(cmd *cobra.Command, o *mirrorOpts) {
	f := cmd.Flags()
	f.StringArrayVar(&o.mirrors, "mirror", nil, "a mirror `REGISTRY=URL`, tried for REGISTRY's blobs and manifests by digest before REGISTRY; repeatable, tried in order (default $"+mirrorsEnv+")")
	f.StringVar(&o.hostsDir, "hosts-dir", "", "read mirrors from containerd's `DIR`/<registry>/hosts.toml files, tried after those of --mirror")
	cmd.Long += mirrorHelp
	cmd.Example += mirrorExample
}

// options checks every mirror and returns the remotecache options that
// set the mirrors of refs' registries: those of --mirror (or of
// $LAYERCACHE_MIRRORS) first, then those of --hosts-dir. Errors are usage
// errors that name the flag, the variable or the file.
func (o *mirrorOpts) options(refs []name.Reference, log *slog.Logger) ([]remotecache.Option, error) {
	opts, configs, err := o.load(log)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, ref := range refs {
		reg := ref.Context().RegistryStr()
		if seen[reg] {
			continue
		}
		seen[reg] = true
		opts = append(opts, hostsMirrors(configs, reg, log)...)
	}
	return opts, nil
}

// load checks every mirror, and returns the options of --mirror (or of
// $LAYERCACHE_MIRRORS), which name their registries, and the hosts.toml
// configurations of --hosts-dir (nil without it), for hostsMirrors.
func (o *mirrorOpts) load(log *slog.Logger) ([]remotecache.Option, map[string]hostsconf.Config, error) {
	items, src := o.mirrors, "--mirror"
	if len(items) == 0 {
		src = mirrorsEnv
		for _, s := range strings.Split(os.Getenv(mirrorsEnv), ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
	}
	var opts []remotecache.Option
	for _, s := range items {
		reg, m, err := remotecache.ParseMirror(s)
		if err != nil {
			return nil, nil, usagef("%s: %w", src, err)
		}
		log.Debug("mirror", "registry", reg, "url", m.URL, "from", src)
		opts = append(opts, remotecache.WithMirrors(reg, m))
	}
	if o.hostsDir == "" {
		return opts, nil, nil
	}
	configs, err := hostsconf.Load(o.hostsDir)
	if err != nil {
		return nil, nil, usagef("--hosts-dir: %w", err)
	}
	return opts, configs, nil
}

// hostsMirrors returns the option that sets the mirrors that configs (of
// --hosts-dir) give the registry reg, if any.
func hostsMirrors(configs map[string]hostsconf.Config, reg string, log *slog.Logger) []remotecache.Option {
	c, ok := hostsconf.Lookup(configs, reg)
	if !ok {
		return nil
	}
	ms := c.MirrorsFor(reg)
	for _, m := range ms {
		log.Debug("mirror", "registry", reg, "url", m.URL, "resolve", m.Resolve, "from", c.File)
	}
	if len(ms) == 0 {
		return nil
	}
	return []remotecache.Option{remotecache.WithMirrors(reg, ms...)}
}
