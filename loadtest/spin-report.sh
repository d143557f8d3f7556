#!/usr/bin/env bash
# The server's CPU per request and latency for mlp_small (HTTP binary) at fixed
# open-loop rates and at concurrency 1 and 4, with the worker's idle spin at
# its default and off: what the spin buys (back-to-back requests) and what it
# costs (CPU when requests come further apart than it waits).
# Needs `make build loadtest` and the peer harness' models.
#
#   loadtest/spin-report.sh [OUT_DIR]      (default results/spin-<date>)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_HOME="${PEERS_HOME:-${TMPDIR:-/tmp}/bench-peers}"
OUT="${1:-results/spin-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
repo="$OUT/models"
rm -rf "$repo" && mkdir -p "$repo" && cp -r "$PEERS_HOME/models/mlp_small" "$repo/"
echo "[$(date +%T)] machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/report.txt"
for spin in default 0; do
  if [ $spin = default ]; then rm -f "$repo/mlp_small/config.toml"; else echo "idle_spin_microseconds = 0" > "$repo/mlp_small/config.toml"; fi
  ORT_DYLIB_PATH="$PWD/target/release/libonnxruntime.so" target/release/switchyard serve --models "$repo" \
    --http 127.0.0.1:18750 --grpc 127.0.0.1:18751 > "$OUT/server-$spin.log" 2>&1 &
  pid=$!
  until curl -sf -o /dev/null http://127.0.0.1:18750/v2/health/ready; do sleep 0.1; done
  for load in "--rate 1000 --concurrency 64" "--rate 5000 --concurrency 64" "--rate 12000 --concurrency 64" \
              "--concurrency 1" "--concurrency 4"; do
    c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    # shellcheck disable=SC2086
    target/release/switchyard-loadtest --url http://127.0.0.1:18750 --model mlp_small --protocol http-binary \
      $load --duration 6 --json > "$OUT/run.json"
    c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    python3 - "$OUT/run.json" "$spin" "$load" "$c0" "$c1" <<'PY' | tee -a "$OUT/report.txt"
import json, os, sys
r = json.load(open(sys.argv[1]))
n = r["ok"] + r["errors"]
cpu = (float(sys.argv[5]) - float(sys.argv[4])) / os.sysconf("SC_CLK_TCK") * 1e6 / n
print(f"spin {sys.argv[2]:7} {sys.argv[3]:30} {r['infer_per_s']:8.0f} infer/s  server CPU {cpu:6.1f} µs/request  p50 {r['p50_us']:5} µs  p99 {r['p99_us']:5} µs  errors {r['errors']}")
PY
  done
  kill $pid; wait $pid 2>/dev/null || true
done
rm -f "$OUT/run.json"
