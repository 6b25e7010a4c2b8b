#!/usr/bin/env bash
# The image's base: a slim Debian root filesystem made here with debootstrap from Debian's packages (no
# container registry is needed), written as a tar that container/base/Containerfile adds to `FROM scratch`.
#
#   container/base/rootfs.sh OUT.tar
#
# Environment: DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
# NODEAGENT_BASE_CACHE (a directory; when set, the tar is kept there under a key made of this script's
# text, the suite, the mirror and the architecture, so a changed recipe never reuses a stale base).
# Needs root (debootstrap chroots) and takes ~40 s on a cold cache.
set -euo pipefail

out=${1:?usage: rootfs.sh OUT.tar}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
arch=$(dpkg --print-architecture)
# python3: the agent's interpreter (Debian's 3.11 in bookworm); kmod: modprobe for the driver subsystem.
# coreutils' chroot (in minbase) runs host binaries (systemctl, containerd) under --root.
include=python3,kmod
# Removed after install: package tooling the running agent never uses (no apt inside the image).
purge=(apt libapt-pkg6.0 gpgv debian-archive-keyring libgnutls30 libhogweed6 libnettle8 libp11-kit0 libtasn1-6
  libidn2-0 libunistring2)

if [ -n "${NODEAGENT_BASE_CACHE:-}" ]; then
  key=$( (cat "$0"; echo "$suite $mirror $arch") | sha256sum | cut -c1-16)
  cached="$NODEAGENT_BASE_CACHE/nodeagent-base-$suite-$arch-$key.tar"
  if [ -s "$cached" ]; then
    echo "rootfs: cached $cached"
    cp "$cached" "$out"
    exit 0
  fi
fi

work=$(mktemp -d /tmp/nodeagent-rootfs.XXXXXX)
cleanup() {
  # debootstrap mounts /proc and /sys inside the target while it runs; never rm through a mount.
  for m in proc sys dev/pts; do umount -l "$work/rootfs/$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

debootstrap --variant=minbase --include="$include" "$suite" "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  echo "rootfs: debootstrap of $suite from $mirror failed (log above)" >&2
  exit 1
}
root=$work/rootfs
chroot "$root" dpkg --purge "${purge[@]}" > /dev/null
# Keep each package's copyright notice, drop the rest of the documentation, locales and caches.
find "$root/usr/share/doc" -type f ! -name copyright -delete
find "$root/usr/share/doc" -type l -delete
rm -rf "$root"/usr/share/{man,info,locale,lintian,linda}/* "$root"/var/cache/apt "$root"/var/lib/apt \
  "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/var/log/* "$root"/tmp/*
# glibc's iconv modules (nothing here calls iconv; Python has its own codecs) and pydoc's topic index.
rm -rf "$root"/usr/lib/*-linux-gnu/gconv "$root"/usr/lib/python3.*/pydoc_data
chroot "$root" python3 -c 'import asyncio, ssl, json, sqlite3, ctypes' # the stdlib parts the agent's deps need

# Reproducible member order; numeric owners so the tar does not depend on this host's user names.
tar --numeric-owner --sort=name -C "$root" -cf "$out" .
if [ -n "${NODEAGENT_BASE_CACHE:-}" ]; then
  mkdir -p "$NODEAGENT_BASE_CACHE"
  cp "$out" "$cached.part" && mv "$cached.part" "$cached"
fi
echo "rootfs: $(du -h "$out" | cut -f1) $out"
