#!/usr/bin/env bash
# Builds Switchyard's image without a container registry: the Dockerfile's
# `prebuilt` stage, on a Debian 12 base made here (debootstrap --variant=minbase
# bookworm, docker import; the tarball kept in .cache/image), from a binary
# built on this machine.
#   scripts/image.sh BINARY TAG
# BINARY: target/release/switchyard (make image) or target/debug/switchyard
# (make image-test); libonnxruntime.so comes from beside it, else .cache.
# Exits 2 when no Docker Engine answers or debootstrap cannot run (not root).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
tag=$2
base=switchyard-base:bookworm
cache=.cache/image
tarball=$cache/bookworm-minbase.tar.gz
export DOCKER_BUILDKIT=0 # the classic builder: no buildx here, and it stops at --target

if ! docker info >/dev/null 2>&1; then
    echo "image: no Docker Engine answers (docker info failed)" >&2
    exit 2
fi
mkdir -p "$cache"
if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ ! -s "$tarball" ]; then
        sudo=""
        if [ "$(id -u)" != 0 ]; then
            if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
                echo "image: making the base needs root (debootstrap)" >&2
                exit 2
            fi
        fi
        command -v debootstrap >/dev/null || $sudo apt-get install -y --no-install-recommends debootstrap >&2
        root=$(mktemp -d)
        trap '$sudo rm -rf "$root"' EXIT
        echo "image: debootstrap --variant=minbase bookworm (once; kept in $tarball)" >&2
        $sudo debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
            || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
        # What a runtime image does not need: documentation, locales, the
        # package lists and caches (bookworm-slim drops the same).
        $sudo rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
            "$root"/usr/share/locale/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
            "$root"/var/log/* "$root"/tmp/*
        $sudo tar -C "$root" -czf "$tarball.partial" .
        $sudo chown "$(id -u):$(id -g)" "$tarball.partial"
        mv "$tarball.partial" "$tarball"
        $sudo rm -rf "$root"
        trap - EXIT
    fi
    docker import "$tarball" "$base" >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
lib=$(dirname "$bin")/libonnxruntime.so
[ -f "$lib" ] || lib=$(ls .cache/onnxruntime-*/libonnxruntime.so | head -1)
# Debug symbols stay on the host: the image needs the code only.
objcopy --strip-debug "$bin" "$ctx/switchyard"
cp "$lib" "$ctx/libonnxruntime.so"
mkdir "$ctx/state"
docker build --quiet -f Dockerfile --target prebuilt \
    --build-arg PREBUILT_BASE="$base" \
    --build-arg VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$tag" "$ctx" >"$ctx/build.log" 2>&1 || { cat "$ctx/build.log" >&2; exit 1; }
echo "image: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))" >&2
