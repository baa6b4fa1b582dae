#!/usr/bin/env bash
# Installs the Debian packages a make target needs, idempotently: packages already installed
# are left alone, and apt is not touched at all when nothing is missing. Needs root only when
# something must be installed.
#   usage: install-deps.sh PACKAGE...
set -euo pipefail

missing=()
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have stale package lists: update once if the first try fails.
if ! apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/vpngw-apt.log 2>&1; then
    apt-get update >>/tmp/vpngw-apt.log 2>&1
    apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/vpngw-apt.log 2>&1 || {
        echo "apt-get install failed; see /tmp/vpngw-apt.log" >&2
        tail -20 /tmp/vpngw-apt.log >&2
        exit 1
    }
fi
