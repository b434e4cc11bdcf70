#!/usr/bin/env bash
# Installs what layercache's tests need on a fresh Debian machine, as root
# (or with sudo). Idempotent: on a machine that has everything it only checks,
# in a few seconds.
#
#   1. skopeo, which the interoperability tests use to read the cache
#      directory as an OCI layout (apt-get update runs only if it is missing).
#   2. The Go modules of the root module, of integration/, and of the ko
#      adapter and its test (contrib/kocache, integration/ko).
#   3. The CNCF distribution registry that the integration tests run as a
#      process. regtest.Build compiles it from the version pinned in
#      integration/go.mod into $XDG_CACHE_HOME/layercache/registry/
#      (~/.cache/... by default) and later runs reuse it. The tests would build
#      it on first use too; doing it here keeps its one-to-two-minute first
#      build out of the tests' time limits. Set LAYERCACHE_REGISTRY_BIN to use
#      a registry binary of your own instead.
#   4. The clients that the tests of `layercache serve` run: crane (ggcr's
#      cmd/crane) and the OCI distribution-spec conformance suite, at the
#      versions of integration/go.mod's tool directives, built by
#      regtest.BuildTool into $XDG_CACHE_HOME/layercache/tools/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo"
fi

if ! command -v skopeo >/dev/null 2>&1; then
	echo "install-deps: installing skopeo" >&2
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq --no-install-recommends skopeo >/dev/null
fi

echo "install-deps: downloading Go modules" >&2
go mod download
(cd integration && go mod download)
(cd contrib/kocache && go mod download)
(cd integration/ko && go mod download)

echo "install-deps: building the test registry" >&2
bin=$(cd integration && go run ./regtest/cmd/buildregistry)
echo "install-deps: registry at $bin" >&2

echo "install-deps: building crane and the conformance suite" >&2
(cd integration && go run ./regtest/cmd/buildtools) | sed 's/^/install-deps: tool at /' >&2
