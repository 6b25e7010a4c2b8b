#!/usr/bin/env bash
# Copy the sources the image's nodeagent wheel is built from into DIR (created; must not exist yet).
#
#   container/stage.sh DIR
#
# What ships is the package metadata, the README, the licence and nodeagent/ without the code that only
# tests and development use: nodeagent/testing/ (the test API server, its certificates and RBAC
# checks, the context builders and scripted GPUs). The simulator (nodeagent/backends/sim/,
# nodeagent/backends/gpu/sim/) ships: `nodeagent run --simulate` is part of the product.
# Byte-code caches never ship. build.sh builds the wheel from DIR; tests/container/test_stage.py checks
# what lands there.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: container/stage.sh DIR" >&2
  exit 2
fi
dest=$1
repo=$(cd "$(dirname "$0")/.." && pwd)
# Paths relative to the repository that never reach the image.
test_only=(nodeagent/testing)

if [ -e "$dest" ]; then
  echo "stage.sh: $dest already exists" >&2
  exit 1
fi
excludes=(--exclude=__pycache__ --exclude='*.pyc')
for path in "${test_only[@]}"; do excludes+=("--exclude=./$path"); done
mkdir -p "$dest"
shipped=(./pyproject.toml ./README.md ./nodeagent)
for licence in "$repo"/LICENSE*; do
  if [ -e "$licence" ]; then shipped+=("./$(basename "$licence")"); fi
done
(cd "$repo" && tar "${excludes[@]}" -cf - "${shipped[@]}") | tar -xf - -C "$dest"
