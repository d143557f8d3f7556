#!/usr/bin/env bash
# The batching issue's numbers, side by side in one run on this machine:
# in-process ONNX Runtime (the limit), Switchyard with batching on and off over
# gRPC at concurrency 64 and 1, an open-loop run at 80% of the measured peak, and
# RSS under concurrency 256. Needs the peer harness (../shared/bench) set up once
# with its setup_tools.sh, and `make build loadtest`.
#
#   loadtest/batching-report.sh [OUT_DIR]      (default results/batching-<date>)
#
# Env: MODEL=mlp_large  DURATION=8 (seconds per point)  CONNECTIONS=4 (gRPC
#      connections the 64 clients share; v2load in compare.sh uses one each)
#      SY=target/release/switchyard (another build, for a before/after)
# Pauses the fuzzers of scripts/fuzz.sh while it measures, if any run; skips
# the peer harness' client when setup_tools.sh has not built it.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="$(cd ../shared/bench && pwd)"
PEERS_HOME="${PEERS_HOME:-${TMPDIR:-/tmp}/bench-peers}"
MODEL="${MODEL:-mlp_large}"
DURATION="${DURATION:-8}"
CONNECTIONS="${CONNECTIONS:-4}"
OUT="${1:-results/batching-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LT=target/release/switchyard-loadtest
SY="${SY:-target/release/switchyard}"
[ -x "$LT" ] && [ -x "$SY" ] || { echo "run: make build loadtest" >&2; exit 1; }
[ -d "$PEERS_HOME/models/$MODEL" ] || { echo "run: $BENCH/setup_tools.sh (builds $PEERS_HOME/models)" >&2; exit 1; }

pkill -STOP -f "fuzz/(target|work)/" 2>/dev/null || true
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/report.txt" >&2; }
repo="$OUT/models"
rm -rf "$repo" && mkdir -p "$repo" && cp -r "$PEERS_HOME/models/$MODEL" "$repo/"

pid=""
serve() { # serve MAX_BATCH_SIZE (empty: the default)
  stop
  rm -f "$repo/$MODEL/config.toml"
  [ -z "$1" ] || echo "max_batch_size = $1" > "$repo/$MODEL/config.toml"
  "$SY" serve --models "$repo" --http 127.0.0.1:18000 --grpc 127.0.0.1:18001 > "$OUT/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null http://127.0.0.1:18000/v2/health/ready && return 0
    sleep 0.1
  done
  echo "server did not get ready" >&2; exit 1
}
stop() { [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; }; }
trap 'stop; pkill -CONT -f "fuzz/(target|work)/" 2>/dev/null || true' EXIT

# run LABEL ARGS...: one loadtest point, JSON kept, one line logged.
run() {
  local label="$1"; shift
  "$LT" --url http://127.0.0.1:18000 --grpc-url http://127.0.0.1:18001 --model "$MODEL" \
        --duration "$DURATION" --warmup 2 --json "$@" > "$OUT/$label.json"
  python3 - "$OUT/$label.json" "$label" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:28} {r['infer_per_s']:9.0f} infer/s  p50 {r['p50_us']:6} µs  p99 {r['p99_us']:6} µs  errors {r['errors']}")
PY
}
peak() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['infer_per_s'])" "$OUT/$1.json"; }

log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
log "raw ONNX Runtime, one thread, in-process (raw_ort.py)"
"$PEERS_HOME/venv-tools/bin/python" "$BENCH/raw_ort.py" "$repo" --batches 1,32,64,128 --seconds 3 \
  | tee -a "$OUT/report.txt"

for mode in on off; do
  serve "$([ $mode = off ] && echo 0 || true)"
  log "batching $mode (max_batch_size $([ $mode = off ] && echo 0 || echo default))"
  run "grpc-c64-$mode" --protocol grpc --concurrency 64 --connections "$CONNECTIONS"
  run "grpc-c64-1conn-each-$mode" --protocol grpc --concurrency 64
  run "http-binary-c64-$mode" --protocol http-binary --concurrency 64
  run "grpc-c1-$mode" --protocol grpc --concurrency 1
  run "http-c1-$mode" --protocol http --concurrency 1
done

serve ""
if [ -x "$PEERS_HOME/v2load-target/release/v2load" ]; then
  log "the peer harness' client (v2load: tonic, one connection per client), gRPC, batching on"
  MODELS="$MODEL" PROTOCOLS=grpc CONCURRENCY=1,64 WINDOWS=2 OUT="$OUT/compare.csv" \
    "$BENCH/compare.sh" "switchyard=http://127.0.0.1:18000,http://127.0.0.1:18001,pid=$pid" 2>&1 \
    | grep -E '^\|' | tee -a "$OUT/report.txt"
else
  log "skipped the peer harness' client: v2load is not built ($BENCH/setup_tools.sh)"
fi
for pct in 25 50 80; do
  rate=$(python3 -c "print(round($pct / 100 * $(peak grpc-c64-on)))")
  log "open loop at $pct% of the closed-loop gRPC peak: $rate/s"
  run "grpc-open-${pct}pct" --protocol grpc --rate "$rate" --connections "$CONNECTIONS"
done
serve ""
log "RSS under concurrency 256 (HTTP/1.1, 256 connections), from a fresh server"
rss0=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
run "http-c256" --protocol http --concurrency 256 &
lt=$!
peak_rss=0
while kill -0 "$lt" 2>/dev/null; do
  r=$(awk '/VmRSS/{print $2}' "/proc/$pid/status"); [ "$r" -gt "$peak_rss" ] && peak_rss=$r
  sleep 0.2
done
wait "$lt"
log "RSS idle ${rss0} KiB, peak under c=256 ${peak_rss} KiB, after $(awk '/VmRSS/{print $2}' "/proc/$pid/status") KiB"
log "written to $OUT"
