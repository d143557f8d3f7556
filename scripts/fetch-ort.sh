#!/usr/bin/env bash
# Fetch libonnxruntime.so from the onnxruntime wheel on PyPI (the only place we
# download it from), into DEST, atomically. Usage: fetch-ort.sh VERSION DEST_FILE
set -euo pipefail
version="$1"; dest="$2"
python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching onnxruntime==$version from PyPI for libonnxruntime.so" >&2
"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: "onnxruntime==$version" -d "$tmp"
wheel="$(ls "$tmp"/onnxruntime-"$version"-*.whl)"
mkdir -p "$(dirname "$dest")"
"$python" - "$wheel" "$version" "$dest.partial" <<'PY'
import sys, zipfile, shutil
wheel, version, out = sys.argv[1:]
member = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$dest.partial" "$dest"
echo "ONNX Runtime $version: $dest" >&2
