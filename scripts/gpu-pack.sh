#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has no Rust, no
# network and takes 64 MiB a call (the `device` tool's machines): into .gpu/
# (ignored by git, named in the tool's `carry`), the GPU build and the load
# generator, xz-compressed, and all-MiniLM-L6-v2 with its weights as F16 (45 MB;
# the encoder widens them to F32 on load, on either device, so CPU and GPU run
# the same numbers). Run after `make build-cuda loadtest minilm`.
# ONNX Runtime's CUDA provider (284 MB, 186 MB as xz) does not fit one call: with
# ORT=1 it is split into .gpu-ort1..4 (56 MB each, the tree itself takes 4), to
# carry one per call while the machine stays warm (a later call keeps what an
# earlier one left, and .gpu goes last); the check then runs the ONNX model on
# the GPU too.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/minilm
xz -T0 -6 -c target/release/switchyard > .gpu/switchyard.xz
xz -T0 -6 -c target/release/switchyard-loadtest > .gpu/switchyard-loadtest.xz
# ONNX Runtime itself, which the server loads at start whatever the models.
tar -C target/release -cf - libonnxruntime.so libonnxruntime_providers_shared.so | xz -T0 -6 > .gpu/ort.tar.xz
cp models/minilm/1/*.json models/minilm/1/vocab.txt .gpu/minilm/
cp -r models/minilm/1/1_Pooling .gpu/minilm/
.venv-encoder/bin/python - models/minilm/1/model.safetensors .gpu/minilm/model.safetensors <<'PY'
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.astype("float16") if v.dtype.kind == "f" else v) for k, v in t.items()}, sys.argv[2])
PY
if [ "${ORT:-0}" = 1 ]; then
  rm -rf .gpu-ort*
  tar -C target/release -cf - libonnxruntime_providers_cuda.so | xz -T0 -6 | split -b 56M - .gpu-ort-part-
  i=1; for p in .gpu-ort-part-*; do mkdir ".gpu-ort$i" && mv "$p" ".gpu-ort$i/"; i=$((i + 1)); done
fi
du -sh .gpu .gpu-ort* 2>/dev/null
