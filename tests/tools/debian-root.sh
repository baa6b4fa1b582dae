#!/usr/bin/env bash
# A clean Debian 12 (bookworm) root, minbase variant, as a tarball: the base of the container
# image (`make image`, imported with `docker import`) and the clean system the Debian package is
# installed into by its test. Built once with debootstrap from the machine's Debian mirror and
# kept under target/; later calls only print the path. Needs root the first time.
#   usage: debian-root.sh [OUT.tar]    (default target/debian-root/bookworm-minbase.tar)
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${1:-target/debian-root/bookworm-minbase.tar}
if [[ -s "$out" ]]; then
    echo "$out"
    exit 0
fi
tests/tools/install-deps.sh debootstrap >&2
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d /tmp/vpngw-debian-root.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"
echo "debootstrap --variant=minbase bookworm from $mirror (once; a few minutes)" >&2
if ! debootstrap --variant=minbase bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -20 "$work/debootstrap.log" >&2
    echo "debootstrap failed" >&2
    exit 1
fi
# apt's lists and caches are not part of a base.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
tar --numeric-owner -C "$work/root" -cf "$out.partial" .
mv "$out.partial" "$out"
echo "$out"
