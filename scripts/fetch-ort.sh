#!/usr/bin/env bash
# Fetch libonnxruntime.so from the onnxruntime wheel on PyPI (the only place we
# download it from), into DEST, atomically. Usage: fetch-ort.sh VERSION DEST_FILE
# With ORT_PACKAGE=onnxruntime-gpu, the CUDA and shared provider libraries come
# too, beside DEST (ONNX Runtime loads them from its own folder).
set -euo pipefail
version="$1"; dest="$2"
python="${PYTHON:-python3}"
package="${ORT_PACKAGE:-onnxruntime}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching $package==$version from PyPI for libonnxruntime.so" >&2
"$python" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps \
  --only-binary=:all: "$package==$version" -d "$tmp"
wheel="$(ls "$tmp"/"${package//-/_}"-"$version"-*.whl)"
mkdir -p "$(dirname "$dest")"
"$python" - "$wheel" "$version" "$dest.partial" <<'PY'
import os, sys, zipfile, shutil
wheel, version, out = sys.argv[1:]
member = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z:
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    # The GPU wheel's execution providers, loaded by ONNX Runtime from its folder.
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if base.startswith("libonnxruntime_providers_") and base.endswith(".so"):
            with z.open(name) as src, open(os.path.join(os.path.dirname(out), base), "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
mv "$dest.partial" "$dest"
echo "ONNX Runtime $version: $dest" >&2
