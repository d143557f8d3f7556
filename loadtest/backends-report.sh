#!/usr/bin/env bash
# The sample MLP (16->32->4) through the server from ONNX Runtime (`mlp`) and
# from candle (`mlp_safetensors`, the same weights): HTTP binary, 1 and 64 rows a
# request, 1 and 16 clients, one run each, alternating backends.
# Needs `make build loadtest`. In process: `cargo bench --bench backends -- mlp`.
#
#   loadtest/backends-report.sh [OUT_DIR]      (default results/backends-<date>)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-5}"
OUT="${1:-results/backends-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ORT_DYLIB_PATH="$PWD/target/release/libonnxruntime.so" target/release/switchyard serve --models models \
  --http 127.0.0.1:18700 --grpc 127.0.0.1:18701 > "$OUT/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf -o /dev/null http://127.0.0.1:18700/v2/models/mlp_safetensors/ready \
  && curl -sf -o /dev/null http://127.0.0.1:18700/v2/models/mlp/ready; do sleep 0.1; done
echo "[$(date +%T)] machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); HTTP binary" | tee "$OUT/report.txt"
for rows in 1 64; do
  for c in 1 16; do
    for model in mlp mlp_safetensors; do
      target/release/switchyard-loadtest --url http://127.0.0.1:18700 --model "$model" --protocol http-binary \
        --rows "$rows" --concurrency "$c" --duration "$DURATION" --warmup 1 --json > "$OUT/$model-r$rows-c$c.json"
      python3 - "$OUT/$model-r$rows-c$c.json" "$model" "$rows" "$c" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
r = json.load(open(sys.argv[1]))
rows = int(sys.argv[3])
print(f"{sys.argv[2]:16} rows {rows:3} c {sys.argv[4]:>2}: {r['infer_per_s']:9.0f} req/s {r['infer_per_s'] * rows:10.0f} rows/s  p50 {r['p50_us']:5} µs  errors {r['errors']}")
PY
    done
  done
done
