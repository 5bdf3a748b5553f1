#!/bin/sh
# Installs the Debian packages diffusiond needs to build, test and run.
# Idempotent: apt-get skips what is already installed. Used by `make deps`,
# CI and the Docker build.
set -eu

PACKAGES="build-essential pkg-config clang zlib1g-dev
libmicrohttpd-dev libjansson-dev libpng-dev libcmocka-dev
libvulkan-dev glslang-tools mesa-vulkan-drivers vulkan-validationlayers
vulkan-tools python3 python3-numpy systemd curl"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "deps: all packages present"
    exit 0
fi

echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
