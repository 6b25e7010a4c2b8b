#!/usr/bin/env bash
# Build the test cluster's containerd (a CDI-capable release; Debian's 1.6 ignores the CRI's CDI devices)
# from its published Go module once per version, and print the directory holding the binaries.
#   integration/cluster/build_containerd.sh -> ~/.cache/nodeagent/containerd/<version>-<hash>/
# The directory holds containerd, containerd-shim-runc-v2 and ctr of the same module version
# (CONTAINERD_VERSION in versions.env). A warm run (the directory is there) builds nothing. Go's module and
# build caches are kubebin's (~/.cache/nodeagent/go). Static (CGO_ENABLED=0), without the btrfs, devmapper
# and zfs snapshotters (cgo or unused: the cluster uses overlayfs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
: "${CONTAINERD_VERSION:?versions.env names no CONTAINERD_VERSION}"
module=github.com/containerd/containerd/v2
commands=(containerd containerd-shim-runc-v2 ctr)

cache="${XDG_CACHE_HOME:-$HOME/.cache}/nodeagent"
hash="$(sha256sum "$0" | cut -c1-12)"
out="$cache/containerd/${CONTAINERD_VERSION}-${hash}"
if [ -x "$out/containerd" ]; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build_containerd.sh: go is not installed" >&2; exit 1; }
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local
export CGO_ENABLED=0
mkdir -p "$cache/containerd"
tmp="$(mktemp -d "$cache/containerd/.build-XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "build_containerd.sh: building containerd ${CONTAINERD_VERSION}; cold: minutes on 2 cores" >&2
started=$SECONDS
version="-X ${module}/version.Version=${CONTAINERD_VERSION} -X ${module}/version.Revision=module"
pkgs=()
for name in "${commands[@]}"; do pkgs+=("${module}/cmd/${name}@${CONTAINERD_VERSION}"); done
GOBIN="$tmp" nice -n 10 go install -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags="-s -w $version" "${pkgs[@]}"
echo "$((SECONDS - started))" > "$tmp/build-seconds"
# Publish the finished directory in one rename, so an interrupted build never looks warm.
mv -T "$tmp" "$out" 2>/dev/null || rm -rf "$tmp"
trap - EXIT
echo "$out"
