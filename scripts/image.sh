#!/usr/bin/env bash
# Builds Switchyard's image without a container registry: the Dockerfile's
# `prebuilt` stage, on a Debian 12 base made here (debootstrap --variant=minbase
# bookworm, docker import; the tarball kept in .cache/image), from a binary
# built on this machine.
#   scripts/image.sh BINARY TAG
# BINARY: target/release/switchyard (make image) or target/debug/switchyard
# (make image-test); libonnxruntime.so comes from beside it, else .cache.
# Exits 77 (make image-test's "skipped") when no Docker Engine answers or the
# base cannot be made (debootstrap needs root); any other failure is one.
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
    exit 77
fi
mkdir -p "$cache"
if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ ! -s "$tarball" ]; then
        sudo=""
        if [ "$(id -u)" != 0 ]; then
            if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
                echo "image: making the base needs root (debootstrap)" >&2
                exit 77
            fi
        fi
        if ! command -v debootstrap >/dev/null; then
            $sudo apt-get update -qq >&2
            $sudo apt-get install -y -qq --no-install-recommends debootstrap >&2
        fi
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

lib=$(dirname "$bin")/libonnxruntime.so
[ -f "$lib" ] || lib=$(find .cache -path '.cache/onnxruntime-*/libonnxruntime.so' -print -quit 2>/dev/null || true)
if [ ! -f "$bin" ] || [ -z "$lib" ] || [ ! -f "$lib" ]; then
    echo "image: no $bin with libonnxruntime.so beside it (make build, make ort)" >&2
    exit 1
fi
ctx=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$ctx" "$log"' EXIT
# Debug symbols stay on the host: the image needs the code only.
objcopy --strip-debug "$bin" "$ctx/switchyard"
cp "$lib" "$ctx/libonnxruntime.so"
mkdir "$ctx/state"
docker build --quiet -f Dockerfile --target prebuilt \
    --build-arg RUNTIME_BASE="$base" \
    --build-arg VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$tag" "$ctx" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
echo "image: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))" >&2
