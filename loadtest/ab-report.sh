#!/usr/bin/env bash
# Two builds of the server side by side in one run, alternating A B A B so that
# the machine's drift falls on both: idle RSS, and mlp (the sample repository)
# over HTTP JSON and gRPC at concurrency 1 and 64. Pauses the fuzzers of
# scripts/fuzz.sh while it measures, if any run.
#
#   loadtest/ab-report.sh BIN_A BIN_B [ROUNDS]   (needs `make loadtest`)
#
# e.g. a build of the commit before a change, from a worktree sharing target/:
#   git worktree add /tmp/before REV && (cd /tmp/before && CARGO_TARGET_DIR=$PWD/target \
#     cargo build --release --bin switchyard) ...
set -u
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,12p "$0"; exit 2; }
A=$1 B=$2 ROUNDS=${3:-2}
LT=target/release/switchyard-loadtest
[ -x "$LT" ] || { echo "run: make loadtest" >&2; exit 1; }
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime-1.31.1/libonnxruntime.so}"
pkill -STOP -f "fuzz/(target|work)/" 2>/dev/null
trap 'pkill -CONT -f "fuzz/(target|work)/" 2>/dev/null' EXIT
state=$(mktemp -d)
for round in $(seq "$ROUNDS"); do
  for which in A B; do
    bin=$A; [ $which = B ] && bin=$B
    "$bin" serve --models models --http 127.0.0.1:18000 --grpc 127.0.0.1:18001 \
      --state-dir "$state" >/dev/null 2>&1 &
    sp=$!
    for _ in $(seq 150); do curl -sf localhost:18000/v2/health/ready >/dev/null && break; sleep 0.2; done
    rss=$(awk '/VmRSS/{print $2}' /proc/$sp/status)
    for proto in http grpc; do
      for c in 1 64; do
        r=$("$LT" --url http://127.0.0.1:18000 --grpc-url http://127.0.0.1:18001 --protocol $proto \
          --model mlp --concurrency $c --duration 5 --warmup 1 --json 2>/dev/null)
        echo "$r" | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"round $round $which idle_rss_kib=$rss $proto c=$c infer/s={r['infer_per_s']:.0f} p50_us={r['p50_us']} p99_us={r['p99_us']}\")"
      done
    done
    kill $sp; wait $sp 2>/dev/null
  done
done
rm -rf "$state"
