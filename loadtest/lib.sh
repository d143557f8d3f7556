# Shared by the A/B reports (capture-report.sh, tracing-report.sh): a release
# server on mlp_small started per mode, the loadtest client's run, and each
# mode's throughput and p99 over "off", all rounds summed. Set KIND (the
# runs' file prefix), then source it with the script's OUT_DIR argument:
# OUT is that folder, or results/KIND-<date>, made.
OUT="${1:-results/$KIND-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PEERS_HOME="${PEERS_HOME:-${TMPDIR:-/tmp}/bench-peers}"
DURATION="${DURATION:-8}"
SY=target/release/switchyard
repo="$OUT/models"
rm -rf "$repo" && mkdir -p "$repo"
cp -r "$PEERS_HOME/models/mlp_small" "$repo/"
pid=""
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/report.txt" >&2; }
# Stops the server of the last mode, if any.
stop_server() {
  [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  pid=""
}
# serve LABEL [FLAGS...]: a server on 127.0.0.1:18600 with FLAGS, once ready.
serve() {
  local label=$1
  shift
  stop_server
  "$SY" serve --models "$repo" --http 127.0.0.1:18600 --grpc 127.0.0.1:18601 --admin off \
    --shutdown-delay 0s "$@" > "$OUT/server-$label.log" 2>&1 &
  pid=$!
  local deadline=$((SECONDS + 60))
  until curl -sf -o /dev/null http://127.0.0.1:18600/v2/health/ready; do
    if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -gt $deadline ]; then
      tail -5 "$OUT/server-$label.log" >&2
      echo "the server ($label) did not start" >&2
      exit 1
    fi
    sleep 0.1
  done
}
# run LABEL: HTTP binary at concurrency 32 for DURATION seconds.
run() {
  target/release/switchyard-loadtest --url http://127.0.0.1:18600 --model mlp_small --protocol http-binary \
    --concurrency 32 --duration "$DURATION" --warmup 1 --json > "$OUT/$1.json"
  python3 - "$OUT/$1.json" "$1" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:16} {r['infer_per_s']:8.0f} infer/s  p50 {r['p50_us']:6} µs  p99 {r['p99_us']:6} µs  errors {r['errors']}")
PY
}
# ratios MODES: each mode's runs ($KIND-MODE-ROUND.json) over off's.
ratios() {
  python3 - "$OUT" "$KIND" "$1" <<'PY' | tee -a "$OUT/report.txt"
import glob, json, os, sys
out, kind, modes = sys.argv[1], sys.argv[2], sys.argv[3].split()
def runs(mode):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, f"{kind}-{mode}-*.json")))]
off = runs("off")
for mode in modes:
    if mode == "off":
        continue
    on = runs(mode)
    thr = sum(r["infer_per_s"] for r in on) / sum(r["infer_per_s"] for r in off)
    p99 = sum(r["p99_us"] for r in on) / sum(r["p99_us"] for r in off)
    print(f"{kind} {mode} / off: throughput {thr:.3f}, p99 {p99:.3f} over {len(on)} rounds")
PY
}
