#!/usr/bin/env bash
# The cost per request with the client on its own core: the server pinned to
# core SERVER_CPU (0), the load generator to CLIENT_CPU (1), as a pod under a
# 1-CPU limit with its callers elsewhere. For mlp_small and mlp_large (the peer
# harness' models, ../shared/bench/make_models.py), over HTTP JSON, HTTP binary
# and gRPC, at open-loop 1k, 5k and 20k requests/s and closed-loop c=1 and
# c=64: throughput, p50, p99 and the server's CPU per request (user + system
# from /proc/PID/stat), beside in-process ONNX Runtime on the server's core in
# the same run (raw_ort.py: batch 1 p50, and the best batched rows/s).
# One table: OUT/report.md. Needs `make build loadtest` and .venv-test
# (make .venv-test/.done: onnx and onnxruntime for the models and raw ORT).
#
#   loadtest/pinned-report.sh [OUT_DIR]    (default results/pinned-<date>)
#   SECONDS_PER_POINT=5 MODELS=mlp_small PROTOCOLS="http grpc" LATENCY_MODES="cpu balanced latency" \
#     INLINE="50 0" POINTS="rate1000 c1" loadtest/pinned-report.sh OUT     (a part; appends to OUT/report.md)
# INLINE: each model's inline_max_microseconds, one server per value (default:
# the model's default, written as "default"). BUILDS: "LABEL=BINARY ..." puts
# builds side by side, one server each in turn (repeat them to alternate: "a=X
# b=Y a=X b=Y"; default "HEAD=target/release/switchyard").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/pinned-$(date +%Y-%m-%d)}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
SECS="${SECONDS_PER_POINT:-5}"
MODELS="${MODELS:-mlp_small mlp_large}"
PROTOCOLS="${PROTOCOLS:-http http-binary grpc}"
POINTS="${POINTS:-rate1000 rate5000 rate20000 c1 c64}"
LATENCY_MODES="${LATENCY_MODES:-balanced}"
INLINE="${INLINE:-default}"
BUILDS="${BUILDS:-HEAD=target/release/switchyard}"
PY="${PYTHON:-.venv-test/bin/python}"
BENCH="${BENCH:-../shared/bench}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
work="$(mktemp -d)"
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
export ORT_DYLIB_PATH="$PWD/target/release/libonnxruntime.so"
"$PY" "$BENCH/make_models.py" "$work/models" > /dev/null
tck=$(getconf CLK_TCK)
{
  echo "# Cost per request, server on core $SERVER_CPU, load generator on core $CLIENT_CPU"
  echo
  echo "$(date -u +%FT%TZ), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), ${SECS} s a point"
  echo
  echo "| model | build | --latency-mode | inline µs | protocol | load | infer/s | p50 µs | p99 µs | server CPU µs/request | errors |"
  echo "|---|---|---|---|---|---|---:|---:|---:|---:|---:|"
} >> "$OUT/report.md"
raw="$work/raw.csv"
for model in $MODELS; do
  taskset -c "$SERVER_CPU" "$PY" "$BENCH/raw_ort.py" "$work/models" --models "$model" \
    --batches 1,8,32,64 --seconds 2 --csv "$raw" > /dev/null
  for mode in $LATENCY_MODES; do
  for inline in $INLINE; do
  for build in $BUILDS; do
    label=${build%%=*} bin=${build#*=}
    for m in "$work"/models/*/; do
      if [ "$inline" = default ]; then rm -f "$m/config.toml"
      else echo "inline_max_microseconds = $inline" > "$m/config.toml"; fi
    done
    taskset -c "$SERVER_CPU" "$bin" serve --models "$work/models" --latency-mode "$mode" \
      --http 127.0.0.1:18760 --grpc 127.0.0.1:18761 --admin off --no-metrics > "$work/server.log" 2>&1 &
    server=$!
    until curl -sf -o /dev/null http://127.0.0.1:18760/v2/health/ready; do sleep 0.1; done
    # Warm every path once (connections, the worker, ORT's first runs); the
    # points then count every request they send against the CPU they cost.
    for protocol in $PROTOCOLS; do
      taskset -c "$CLIENT_CPU" target/release/switchyard-loadtest --url http://127.0.0.1:18760 \
        --grpc-url http://127.0.0.1:18761 --model "$model" --protocol "$protocol" --concurrency 8 \
        --duration 1 --warmup 0 > /dev/null
    done
    for protocol in $PROTOCOLS; do
      for point in $POINTS; do
        case $point in
          rate*) load=(--rate "${point#rate}" --concurrency 64) ;;
          c*) load=(--concurrency "${point#c}") ;;
        esac
        c0=$(awk '{print $14 + $15}' "/proc/$server/stat")
        taskset -c "$CLIENT_CPU" target/release/switchyard-loadtest --url http://127.0.0.1:18760 \
          --grpc-url http://127.0.0.1:18761 --model "$model" --protocol "$protocol" "${load[@]}" \
          --duration "$SECS" --warmup 0 --json > "$work/run.json"
        c1=$(awk '{print $14 + $15}' "/proc/$server/stat")
        "$PY" - "$work/run.json" "$model" "$protocol" "$point" "$c0" "$c1" "$tck" "$mode" "$inline" "$label" <<'PY' >> "$OUT/report.md"
import json, sys
r = json.load(open(sys.argv[1]))
model, protocol, point, c0, c1, tck, mode, inline, label = sys.argv[2:11]
n = r["ok"] + r["errors"]
cpu = (float(c1) - float(c0)) / float(tck) * 1e6 / max(1, n)
load = f"open {int(point[4:]):,}/s" if point.startswith("rate") else f"closed c={point[1:]}"
print(f"| {model} | {label} | {mode} | {inline} | {protocol} | {load} | {r['infer_per_s']:,.0f} | {r['p50_us']:,} | {r['p99_us']:,} | {cpu:.1f} | {r['errors']} |")
PY
      done
    done
    kill "$server"; wait "$server" 2>/dev/null || true; server=""
  done
  done
  done
done
"$PY" - "$raw" "$SERVER_CPU" <<'PY' >> "$OUT/report.md"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"\nIn-process ONNX Runtime {rows[0]['ort_version']} on core {sys.argv[2]} (raw_ort.py, intra-op 1), same run:\n")
print("| model | batch 1 p50 µs | batch 1 runs/s | best batched rows/s (batch) |")
print("|---|---:|---:|---:|")
for m in dict.fromkeys(r["model"] for r in rows):
    mine = [r for r in rows if r["model"] == m]
    one = next(r for r in mine if r["batch"] == "1")
    best = max(mine, key=lambda r: float(r["rows_per_s"]))
    print(f"| {m} | {float(one['p50_us']):.1f} | {float(one['runs_per_s']):,.0f} | {float(best['rows_per_s']):,.0f} ({best['batch']}) |")
PY
echo "report: $OUT/report.md"
