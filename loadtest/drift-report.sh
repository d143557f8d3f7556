#!/usr/bin/env bash
# Throughput with drift monitoring on (sample rate 1) against off, same load, one
# run, for mlp_small (64 features, profiled on normal data) and iris (the sample
# tabular model and its training data); and the monitor's memory.
# Needs `make build loadtest` and the peer harness' models.
#
#   loadtest/drift-report.sh [OUT_DIR]      (default results/drift-<date>)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_HOME="${PEERS_HOME:-${TMPDIR:-/tmp}/bench-peers}"
DURATION="${DURATION:-8}"
OUT="${1:-results/drift-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
repo="$OUT/models"
rm -rf "$repo" && mkdir -p "$repo"
cp -r "$PEERS_HOME/models/mlp_small" "$repo/" && cp -r models/iris "$repo/"
python3 - "$OUT/mlp_small.csv" <<'PY'
import random, sys
random.seed(1)
with open(sys.argv[1], "w") as f:
    for _ in range(5000):
        f.write(",".join(f"{random.gauss(0, 1):.6f}" for _ in range(64)) + "\n")
PY
SY=target/release/switchyard
ORT_DYLIB_PATH="$PWD/target/release/libonnxruntime.so" "$SY" profile --model "$repo/mlp_small/1" --data "$OUT/mlp_small.csv"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/report.txt" >&2; }
pid=""
serve() { # serve on|off
  [ -z "$pid" ] || { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  for m in mlp_small iris; do
    if [ "$1" = off ]; then printf '[drift]\nenabled = false\n' > "$repo/$m/config.toml"; else rm -f "$repo/$m/config.toml"; fi
  done
  "$SY" serve --models "$repo" --http 127.0.0.1:18500 --grpc 127.0.0.1:18501 > "$OUT/server-$1.log" 2>&1 &
  pid=$!
  until curl -sf -o /dev/null http://127.0.0.1:18500/v2/health/ready; do sleep 0.1; done
}
trap '[ -z "$pid" ] || kill $pid 2>/dev/null || true' EXIT
run() { # run LABEL MODEL
  target/release/switchyard-loadtest --url http://127.0.0.1:18500 --model "$2" --protocol http-binary \
    --concurrency 32 --duration "$DURATION" --warmup 1 --json > "$OUT/$1.json"
  python3 - "$OUT/$1.json" "$1" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:20} {r['infer_per_s']:8.0f} infer/s  p50 {r['p50_us']:6} µs  p99 {r['p99_us']:6} µs  errors {r['errors']}")
PY
}
log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); HTTP binary, concurrency 32"
for round in $(seq "${ROUNDS:-3}"); do
  for mode in on off; do
    serve $mode
    rss0=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
    run "mlp_small-$mode-$round" mlp_small
    run "iris-$mode-$round" iris
    log "drift $mode: RSS $rss0 KiB at start, $(awk '/VmRSS/{print $2}' "/proc/$pid/status") KiB after"
    if [ $mode = on ]; then
      curl -s http://127.0.0.1:18500/v2/models/mlp_small/drift | python3 -c 'import json,sys; r=json.load(sys.stdin); print("mlp_small drift: rows", r["rows"], "seen", r["seen"], "dropped", r["dropped"], "max psi %.4f" % max(f["psi"] for f in r["features"]))' | tee -a "$OUT/report.txt"
    fi
  done
done
# On over off, all rounds summed (one round's ratio swings ±10 % on a shared VM).
python3 - "$OUT" <<'PY' | tee -a "$OUT/report.txt"
import glob, json, os, sys
for m in ("mlp_small", "iris"):
    got = {mode: [json.load(open(f))["infer_per_s"] for f in sorted(glob.glob(os.path.join(sys.argv[1], f"{m}-{mode}-*.json")))] for mode in ("on", "off")}
    print(f"{m}: drift on / off = {sum(got['on']) / sum(got['off']):.3f} over {len(got['on'])} rounds")
PY
