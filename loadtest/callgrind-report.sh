#!/usr/bin/env bash
# Instructions per request, counted by callgrind: the measure that holds still
# on a shared machine where time does not. The server runs under valgrind on
# the peer harness' models (../shared/bench/make_models.py) with inline runs
# off (every request takes the queue), `v2load` sends load for 3 s, the
# counters are zeroed, then 5 s more are counted; requests come from the
# model's own inference_count. Prints instructions per request on the I/O
# threads (all but the model worker's, `serving::worker::run`) and on the
# model worker. User space only: the kernel's share is not counted.
#
#   loadtest/callgrind-report.sh BIN [PROTOCOL=grpc] [CONCURRENCY=8] [MODEL=mlp_small]
#
# Needs valgrind (apt-get install valgrind), `make .venv-test/.done`, and
# v2load (../shared/bench/setup_tools.sh builds it; V2LOAD= to point at it).
# Compare builds by running it once for each, one after the other.
# CONFIG=TOML appends to every model's config.toml (a [capture] table, say);
# FLAGS="..." are added to the server's command line (--otlp-endpoint URL, say);
# KEEP=FILE keeps the callgrind dump there, for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,18p "$0"; exit 2; }
BIN=$1 PROTO=${2:-grpc} C=${3:-8} MODEL=${4:-mlp_small}
V2LOAD="${V2LOAD:-${TMPDIR:-/tmp}/bench-peers/v2load-target/release/v2load}"
case $MODEL in mlp_small) shape=1,64 ;; mlp_large) shape=1,256 ;; *) echo "model: mlp_small or mlp_large" >&2; exit 2 ;; esac
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime-1.31.1/libonnxruntime.so}"
work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
.venv-test/bin/python ../shared/bench/make_models.py "$work/models" > /dev/null
for m in "$work"/models/*/; do printf 'inline_max_microseconds = 0\n%s\n' "${CONFIG:-}" > "$m/config.toml"; done
valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$BIN" serve --models "$work/models" \
  --http 127.0.0.1:18790 --grpc 127.0.0.1:18791 --admin off --no-metrics ${FLAGS:-} > "$work/server.log" 2>&1 &
server=$!
until curl -sf -o /dev/null http://127.0.0.1:18790/v2/health/ready; do sleep 0.5; done
url=http://127.0.0.1:18790; [ "$PROTO" = grpc ] && url=http://127.0.0.1:18791
load() { "$V2LOAD" --url "$url" --protocol "$PROTO" --model "$MODEL" --shape "$shape" \
  --concurrency "$C" --warmup-ms 0 --window-ms "$1" --windows 1 > /dev/null 2>&1; }
count() { curl -s "http://127.0.0.1:18790/v2/models/$MODEL/stats" |
  python3 -c "import json,sys; print(json.load(sys.stdin)['model_stats'][0]['inference_count'])"; }
load 3000
n0=$(count)
callgrind_control -z "$server" > /dev/null 2>&1
load 5000
n1=$(count)
callgrind_control -d "$server" > /dev/null 2>&1
for _ in $(seq 50); do ls "$work"/cg.*.1 > /dev/null 2>&1 && break; sleep 0.2; done
sleep 1  # the dump is written, not yet whole
out=$(ls "$work"/cg.*.1)
[ -z "${KEEP:-}" ] || cp "$out" "$KEEP"
all=$(grep -m1 '^summary:' "$out" | awk '{print $2}')
worker=$(callgrind_annotate --inclusive=yes --threshold=100 "$out" 2>/dev/null |
  grep -m1 'switchyard::serving::worker::run \[' | awk '{gsub(",", "", $1); print $1}' || true)
n=$((n1 - n0))
echo "$(basename "$BIN") $PROTO $MODEL c=$C: $n requests; instructions per request: I/O threads $(((all - ${worker:-0}) / n)), model worker $((${worker:-0} / n))"
