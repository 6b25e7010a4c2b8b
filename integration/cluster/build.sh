#!/usr/bin/env bash
# Build the test cluster's multi-call binary (kubebin/) once per version and source, and print its path.
#   integration/cluster/build.sh          -> ~/.cache/nodeagent/kubebin/<k8s>-<etcd>-<hash>/kubebin
# The directory also holds symlinks named kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
# and etcd. A warm run (the directory is there) builds nothing. Go's module and build caches live under
# ~/.cache/nodeagent/go, so a rebuild after a source change is incremental too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
src="$here/kubebin"

# versions.env is the one place that names the versions; go.mod must agree with it.
grep -q "^	k8s.io/kubernetes ${KUBERNETES_VERSION}\$" "$src/go.mod" \
  || { echo "build.sh: kubebin/go.mod does not require k8s.io/kubernetes ${KUBERNETES_VERSION}" >&2; exit 1; }
grep -q "^	go.etcd.io/etcd/server/v3 ${ETCD_VERSION}\$" "$src/go.mod" \
  || { echo "build.sh: kubebin/go.mod does not require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}" >&2; exit 1; }

cache="${XDG_CACHE_HOME:-$HOME/.cache}/nodeagent"
hash="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" "$0" | sha256sum | cut -c1-12)"
out="$cache/kubebin/${KUBERNETES_VERSION}-${ETCD_VERSION}-${hash}"
if [ -x "$out/kubebin" ]; then
  echo "$out/kubebin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0
tmp="$(mktemp -d "$cache/kubebin/.build-XXXXXX" 2>/dev/null || { mkdir -p "$cache/kubebin"; mktemp -d "$cache/kubebin/.build-XXXXXX"; })"
trap 'rm -rf "$tmp"' EXIT
echo "build.sh: building kubebin (k8s ${KUBERNETES_VERSION}, etcd ${ETCD_VERSION}); cold: tens of minutes on 2 cores" >&2
minor="${KUBERNETES_VERSION#v*.}"; minor="${minor%%.*}"
version="-X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} -X k8s.io/component-base/version.gitMajor=1"
version="$version -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean"
(cd "$src" && nice -n 10 go build -trimpath -ldflags="-s -w $version" -o "$tmp/kubebin" .)
for name in kube-apiserver kube-controller-manager kube-scheduler kubelet etcd; do
  ln -s kubebin "$tmp/$name"
done
# Publish the finished directory in one rename, so an interrupted build never looks warm.
mkdir -p "$(dirname "$out")"
mv -T "$tmp" "$out" 2>/dev/null || rm -rf "$tmp"
trap - EXIT
echo "$out/kubebin"
