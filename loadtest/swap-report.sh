#!/usr/bin/env bash
# The hot-swap issue's numbers, in one run: time from a complete version folder to
# the first answer from it (detection, load, warm-up, from the server's log), p99
# latency under the same load with and without swaps, and RSS after 50 swaps of
# mlp_large against after the first. Needs `make build loadtest` and the peer
# harness' models (../shared/bench/setup_tools.sh builds them).
#
#   loadtest/swap-report.sh [OUT_DIR]        (default results/swap-<date>)
#
# Env: MODEL=mlp_large  CONCURRENCY=32  DURATION=20 (seconds of each load run)
#      SWAPS=50  POLL=5s (the server's --poll-interval; file events come first)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_HOME="${PEERS_HOME:-${TMPDIR:-/tmp}/bench-peers}"
MODEL="${MODEL:-mlp_large}"
CONCURRENCY="${CONCURRENCY:-32}"
DURATION="${DURATION:-20}"
SWAPS="${SWAPS:-50}"
POLL="${POLL:-5s}"
OUT="${1:-results/swap-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LT=target/release/switchyard-loadtest
SY=target/release/switchyard
[ -x "$LT" ] && [ -x "$SY" ] || { echo "run: make build loadtest" >&2; exit 1; }
SRC="$PEERS_HOME/models/$MODEL/1"
[ -f "$SRC/model.onnx" ] || { echo "run: ../shared/bench/setup_tools.sh (builds $PEERS_HOME/models)" >&2; exit 1; }

log() { echo "[$(date +%T)] $*" | tee -a "$OUT/report.txt" >&2; }
repo="$OUT/models"
rm -rf "$repo" && mkdir -p "$repo/$MODEL" && cp -r "$SRC" "$repo/$MODEL/1"
"$SY" serve --models "$repo" --http 127.0.0.1:18200 --grpc 127.0.0.1:18201 --poll-interval "$POLL" \
  > "$OUT/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf -o /dev/null http://127.0.0.1:18200/v2/health/ready; do sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' "/proc/$pid/status"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
serving() { curl -s "http://127.0.0.1:18200/v2/models/$MODEL" | grep -q "\"versions\":\[\"$1\"\]"; }

current=1
# swap: publishes version current+1 (written under a hidden name, renamed into
# place), waits until it is the one served, removes the old folder; sets took_ms.
took_ms=0
swap() {
  local next=$((current + 1)) t0
  cp -r "$SRC" "$repo/$MODEL/.$next.tmp"
  t0=$(now_ms)
  mv "$repo/$MODEL/.$next.tmp" "$repo/$MODEL/$next"
  until serving "$next"; do sleep "${POLL_SLEEP:-0.005}"; done
  took_ms=$(( $(now_ms) - t0 ))
  rm -rf "${repo:?}/$MODEL/$current"
  current=$next
}
load() { # load LABEL: closed loop, JSON result kept, one line logged
  "$LT" --url http://127.0.0.1:18200 --model "$MODEL" --protocol http --concurrency "$CONCURRENCY" \
        --duration "$DURATION" --warmup 1 --json > "$OUT/$1.json"
  python3 - "$OUT/$1.json" "$1" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:14} {r['infer_per_s']:8.0f} infer/s  p50 {r['p50_us']:6} µs  p99 {r['p99_us']:6} µs  max {r['max_us']} µs  errors {r['errors']}")
PY
}

log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $MODEL, HTTP JSON, concurrency $CONCURRENCY"
swap
log "first swap: $took_ms ms from rename to first answer; RSS $(rss) KiB"
log "steady state, no swaps"
load steady
log "the same load with a swap every ~1 s"
# While measured, the driver polls gently: its own curl processes take CPU from the server.
(sleep 1.5; end=$(( $(now_ms) + (DURATION - 2) * 1000 )); while [ "$(now_ms)" -lt "$end" ]; do POLL_SLEEP=0.1 swap; sleep 1; done) &
swapper=$!
load swapping
wait "$swapper"
current=$(ls "$repo/$MODEL" | grep -E '^[0-9]+$' | sort -n | tail -1)
log "$((current - 1)) swaps so far"
# Memory: SWAPS more swaps with no load; RSS 1 s after some of them.
times=()
samples=""
for i in $(seq "$SWAPS"); do
  swap; times+=("$took_ms")
  case $i in 1|10|25|"$SWAPS") sleep 1; samples="$samples after swap $i: $(rss) KiB;";; esac
done
log "RSS, idle:$samples"
log "rename → first answer, the last ${#times[@]} swaps (ms): $(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')"
python3 - "$OUT/server.log" <<'PY' | tee -a "$OUT/report.txt"
import re, statistics, sys
rows = [tuple(int(x) for x in m.groups()) for m in
        re.finditer(r"detect_ms=(\d+) load_ms=(\d+) warmup_ms=(\d+)", open(sys.argv[1]).read())]
rows = rows[1:]  # the first load is the start, not a swap
for i, name in enumerate(["detection", "load", "warm-up"]):
    v = sorted(r[i] for r in rows)
    print(f"{name:10} median {statistics.median(v):5.0f} ms  max {v[-1]:5} ms  over {len(v)} swaps")
PY
log "written to $OUT"
