#!/usr/bin/env bash
# Builds the vpngw container image (deploy/container/Dockerfile) without pulling anything:
#   1. a Docker daemon (dockerd.sh start: the one that answers, or Debian's, started here);
#   2. the release binary, built by cargo on this host (Debian 12's rustc is too old for it);
#   3. the base: a Debian 12 minbase root made by tests/tools/debian-root.sh (debootstrap, once),
#      imported as vpngw-base:bookworm, again only when the tarball changed;
#   4. vpngw:VERSION and vpngw:latest, from a build context holding only the binary.
# Idempotent: a second run rebuilds nothing (cargo and Docker's layer cache) and gives the same
# image ID. Prints the image's name (vpngw:VERSION) on stdout, everything else on stderr.
#   usage: build-image.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

base=vpngw-base:bookworm
context=target/container/context

deploy/container/dockerd.sh start >&2

cargo build --release --locked -p vpngw >&2
version=$(target/release/vpngw --version | awk '{ print $2 }')
[[ -n "$version" ]]

base_tar=$(tests/tools/debian-root.sh)
sum=$(sha256sum "$base_tar" | cut -c1-64)
label='{{ index .Config.Labels "org.vpngw.base.sha256" }}'
if [[ "$(docker image inspect -f "$label" "$base" 2>/dev/null)" != "$sum" ]]; then
    echo "importing $base_tar as $base" >&2
    docker import --change "LABEL org.vpngw.base.sha256=$sum" "$base_tar" "$base" >&2
fi

rm -rf "$context"
mkdir -p "$context"
cp -p target/release/vpngw "$context/vpngw"
# The legacy builder (the engine is Docker 20.10, without BuildKit); no network: nothing is
# fetched during the build.
DOCKER_BUILDKIT=0 docker build --network none --build-arg "BASE=$base" --build-arg "VERSION=$version" \
    -f deploy/container/Dockerfile -t "vpngw:$version" -t vpngw:latest "$context" >&2
echo "vpngw:$version"
