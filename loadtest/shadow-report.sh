#!/usr/bin/env bash
# Throughput with a shadow version getting 10 % (and 100 %) of the requests
# against none, same load, one run: a shadow costs its own compute and nothing
# more. Needs `make build loadtest` and the peer harness' models.
#
#   loadtest/shadow-report.sh [OUT_DIR]      (default results/shadow-<date>)
#
# Env: MODEL=mlp_large  CONCURRENCY=32  DURATION=10  PROTOCOL=http-binary
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_HOME="${PEERS_HOME:-${TMPDIR:-/tmp}/bench-peers}"
MODEL="${MODEL:-mlp_large}"
CONCURRENCY="${CONCURRENCY:-32}"
DURATION="${DURATION:-10}"
PROTOCOL="${PROTOCOL:-http-binary}"
OUT="${1:-results/shadow-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SRC="$PEERS_HOME/models/$MODEL/1"
[ -f "$SRC/model.onnx" ] || { echo "run: ../shared/bench/setup_tools.sh" >&2; exit 1; }
repo="$OUT/models"
rm -rf "$repo" && mkdir -p "$repo/$MODEL"
cp -r "$SRC" "$repo/$MODEL/1" && cp -r "$SRC" "$repo/$MODEL/2"
printf '[version_policy]\nall = true\n' > "$repo/$MODEL/config.toml"
target/release/switchyard serve --models "$repo" --http 127.0.0.1:18300 --grpc 127.0.0.1:18301 \
  --state-dir "$OUT/state" > "$OUT/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf -o /dev/null http://127.0.0.1:18300/v2/health/ready; do sleep 0.1; done
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/report.txt" >&2; }
policy() { curl -sf -X PUT "http://127.0.0.1:18300/admin/models/$MODEL/traffic" -d "$1" > /dev/null; }
run() {
  target/release/switchyard-loadtest --url http://127.0.0.1:18300 --model "$MODEL" --protocol "$PROTOCOL" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup 1 --json > "$OUT/$1.json"
  python3 - "$OUT/$1.json" "$1" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:12} {r['infer_per_s']:8.0f} infer/s  p50 {r['p50_us']:6} µs  p99 {r['p99_us']:6} µs  errors {r['errors']}")
PY
}
log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $MODEL, $PROTOCOL, concurrency $CONCURRENCY"
for round in 1 2; do
  policy '{"weights": {"1": 100}}'; run "none-$round"
  policy '{"weights": {"1": 100}, "shadow": {"version": "2", "percent": 10}}'; run "shadow10-$round"
done
policy '{"weights": {"1": 100}, "shadow": {"version": "2", "percent": 100}}'; run shadow100
curl -s "http://127.0.0.1:18300/admin/models/$MODEL/traffic" | python3 -c 'import json,sys; print("shadow stats:", json.load(sys.stdin)["shadow_stats"])' | tee -a "$OUT/report.txt"
