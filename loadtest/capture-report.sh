#!/usr/bin/env bash
# Throughput and p99 with inference data capture off, and at sample rates 0.01
# and 1.0 into gzip JSON Lines files and into Parquet (pq0.01, pq1.0),
# alternating rounds in one run, mlp_small over HTTP binary at concurrency 32;
# and what the capture wrote (records, bytes, drops). Needs `make build loadtest` and the peer harness' models
# (../shared/bench/setup_tools.sh).
#
#   loadtest/capture-report.sh [OUT_DIR]      (default results/capture-<date>)
# The files go to CAPTURE_DIR (default OUT_DIR/capture), emptied before each
# run and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_HOME="${PEERS_HOME:-${TMPDIR:-/tmp}/bench-peers}"
DURATION="${DURATION:-8}"
OUT="${1:-results/capture-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
repo="$OUT/models"
cap="${CAPTURE_DIR:-$OUT/capture}"
rm -rf "$repo" && mkdir -p "$repo"
cp -r "$PEERS_HOME/models/mlp_small" "$repo/"
SY=target/release/switchyard
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/report.txt" >&2; }
pid=""
MODES="${MODES:-off 0.01 1.0 pq0.01 pq1.0}"
serve() { # serve off|RATE|pqRATE
  [ -z "$pid" ] || { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  rm -rf "$cap"
  # The last run's files written back now, not during the next run.
  sync
  case "$1" in
    off) rm -f "$repo/mlp_small/config.toml" ;;
    pq*) printf '[capture]\ndir = "%s"\nformat = "parquet"\nsample_rate = %s\n' "$cap" "${1#pq}" > "$repo/mlp_small/config.toml" ;;
    *) printf '[capture]\ndir = "%s"\nsample_rate = %s\n' "$cap" "$1" > "$repo/mlp_small/config.toml" ;;
  esac
  "$SY" serve --models "$repo" --http 127.0.0.1:18600 --grpc 127.0.0.1:18601 --admin off \
    --shutdown-delay 0s > "$OUT/server-$1.log" 2>&1 &
  pid=$!
  until curl -sf -o /dev/null http://127.0.0.1:18600/v2/health/ready; do sleep 0.1; done
}
trap '[ -z "$pid" ] || kill $pid 2>/dev/null || true; rm -rf "$cap"' EXIT
run() { # run LABEL
  target/release/switchyard-loadtest --url http://127.0.0.1:18600 --model mlp_small --protocol http-binary \
    --concurrency 32 --duration "$DURATION" --warmup 1 --json > "$OUT/$1.json"
  python3 - "$OUT/$1.json" "$1" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:16} {r['infer_per_s']:8.0f} infer/s  p50 {r['p50_us']:6} µs  p99 {r['p99_us']:6} µs  errors {r['errors']}")
PY
}
log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); HTTP binary, concurrency 32, ${DURATION}s a run"
for round in $(seq "${ROUNDS:-3}"); do
  for mode in $MODES; do
    serve $mode
    run "capture-$mode-$round"
    if [ "$mode" != off ]; then
      scrape=$(curl -s http://127.0.0.1:18600/metrics | grep '^switchyard_capture' || true)
      kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
      files=$(find "$cap" -name '*.jsonl.gz' -o -name '*.parquet' | wc -l)
      bytes=$(find "$cap" \( -name '*.jsonl.gz' -o -name '*.parquet' \) -printf '%s\n' | awk '{s+=$1} END {print s+0}')
      records=$(find "$cap" -name '*.jsonl.gz' -exec zcat {} + 2>/dev/null | wc -l)
      # Written counts files closed (at the stop, after this scrape); drops count at once.
      log "capture $mode: $files files, $bytes bytes, $records JSON Lines records; $(echo "$scrape" | grep -v '^#' | grep dropped | tr '\n' ' ')"
    fi
  done
done
# Each rate over off, all rounds summed (one round's ratio swings on a shared VM).
python3 - "$OUT" "$MODES" <<'PY' | tee -a "$OUT/report.txt"
import glob, json, os, sys
def runs(mode):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(sys.argv[1], f"capture-{mode}-*.json")))]
off = runs("off")
for mode in sys.argv[2].split():
    if mode == "off":
        continue
    on = runs(mode)
    thr = sum(r["infer_per_s"] for r in on) / sum(r["infer_per_s"] for r in off)
    p99 = sum(r["p99_us"] for r in on) / sum(r["p99_us"] for r in off)
    print(f"capture {mode} / off: throughput {thr:.3f}, p99 {p99:.3f} over {len(on)} rounds")
PY
