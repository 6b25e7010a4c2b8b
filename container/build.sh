#!/usr/bin/env bash
# Build the nodeagent image with buildah, from a Debian base made here (container/base/rootfs.sh): no
# container registry is reached. PyPI (or pip's cache) provides the wheels, as for `make .venv`.
#
#   container/build.sh [--tag TAG] [--archive FILE] [--storage DIR]
#
#   --tag      image name (default localhost/nodeagent:<version>)
#   --archive  also write the image as an OCI archive (`ctr images import FILE` loads it)
#   --storage  buildah's own storage root (root/ and run/ under DIR); default: buildah's system storage
# Environment: PYTHON (the interpreter whose pip builds the wheels; default python3), and those of
# container/base/rootfs.sh (DEBIAN_SUITE, DEBIAN_MIRROR, NODEAGENT_BASE_CACHE). Needs root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/nodeagent/__init__.py")
tag=localhost/nodeagent:$version
archive=""
storage=""
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --archive) archive=$2; shift 2 ;;
    --storage) storage=$2; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
suite=${DEBIAN_SUITE:-bookworm}
base=localhost/nodeagent/base:$suite

buildah=(buildah --storage-driver vfs)
if [ -n "$storage" ]; then buildah+=(--root "$storage/root" --runroot "$storage/run"); fi
build=("${buildah[@]}" build --isolation chroot --pull=never --quiet)
# Reproducible creation time: the last commit's, when this is a git checkout.
if stamp=$(git -C "$repo" log -1 --format=%ct 2>/dev/null); then build+=(--timestamp "$stamp"); fi

stage=$(mktemp -d /tmp/nodeagent-image.XXXXXX)
trap 'rm -rf "$stage"' EXIT
started=$SECONDS

"$repo/container/base/rootfs.sh" "$stage/rootfs.tar"
"${build[@]}" -f "$repo/container/base/Containerfile" -t "$base" "$stage" > /dev/null
rm "$stage/rootfs.tar"
echo "build: base $base after $((SECONDS - started)) s"

# nodeagent's wheel, its runtime dependencies' wheels and pip's own (stage 1 runs pip from it). The wheel
# is built from a clean copy of the sources (a build/ left in the checkout could carry deleted modules)
# holding only what ships: container/stage.sh leaves the test-only code out.
"$repo/container/stage.sh" "$stage/src"
if ! "$python" -m pip wheel --quiet --disable-pip-version-check -w "$stage/wheels" "$stage/src" pip > "$stage/pip.log" 2>&1; then
  cat "$stage/pip.log" >&2
  echo "build: pip wheel failed (log above)" >&2
  exit 1
fi
rm -rf "$stage/src"
"${build[@]}" -f "$repo/container/Containerfile" --build-arg "BASE=$base" -t "$tag" "$stage" > /dev/null
echo "build: image $tag after $((SECONDS - started)) s"

if [ -n "$archive" ]; then
  "${buildah[@]}" push --quiet "$tag" "oci-archive:$archive:$tag"
  echo "build: archive $archive ($(du -h "$archive" | cut -f1))"
fi
"${buildah[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$tag"
