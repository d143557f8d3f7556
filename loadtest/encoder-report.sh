#!/usr/bin/env bash
# all-MiniLM-L6-v2: sentences/s through the server at concurrency 32 and the p50
# of one sentence at concurrency 1, against sentence-transformers in process on
# the same machine and the same 50 sentences (tests/fixtures/sentences.txt, one of
# them past the model's 256 tokens). Needs `make build loadtest minilm` and the
# parity test's virtualenv (`make .venv-encoder/.done`).
#
#   loadtest/encoder-report.sh [OUT_DIR]      (default results/encoder-<date>)
#
# Env: CONCURRENCY=32  DURATION=10  PROTOCOL=http-binary  INSTANCES (config.toml's)
set -euo pipefail
cd "$(dirname "$0")/.."
CONCURRENCY="${CONCURRENCY:-32}"
DURATION="${DURATION:-10}"
PROTOCOL="${PROTOCOL:-http-binary}"
TEXTS=tests/fixtures/sentences.txt
OUT="${1:-results/encoder-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
[ -f models/minilm/1/model.safetensors ] || { echo "run: make minilm" >&2; exit 1; }
[ -f .venv-encoder/.done ] || { echo "run: make .venv-encoder/.done" >&2; exit 1; }
repo="$OUT/models"
rm -rf "$repo" && mkdir -p "$repo/minilm"
ln -s "$PWD/models/minilm/1" "$repo/minilm/1"
cp models/minilm/config.toml "$repo/minilm/config.toml"
if [ -n "${INSTANCES:-}" ]; then sed -i "1i instances = $INSTANCES" "$repo/minilm/config.toml"; fi
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/report.txt" >&2; }
log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $PROTOCOL; config: $(grep -v '^#' "$repo/minilm/config.toml" | tr '\n' ' ')"

# sentence-transformers first, alone on the machine.
HF_HUB_OFFLINE=1 .venv-encoder/bin/python - "$TEXTS" "$OUT/sentence-transformers.json" <<'PY' | tee -a "$OUT/report.txt"
import json, sys, time, statistics, torch
from sentence_transformers import SentenceTransformer
texts = open(sys.argv[1], encoding="utf-8").read().splitlines()
m = SentenceTransformer("models/minilm/1", device="cpu")
m.encode(texts, batch_size=32)
data = texts * 20
t = time.perf_counter(); m.encode(data, batch_size=32); d = time.perf_counter() - t
one = []
for x in texts * 4:
    t = time.perf_counter(); m.encode([x]); one.append(time.perf_counter() - t)
r = {"sentences_per_s": len(data) / d, "one_sentence_p50_ms": statistics.median(one) * 1e3,
     "torch_threads": torch.get_num_threads()}
json.dump(r, open(sys.argv[2], "w"))
print(f"sentence-transformers in process: {r['sentences_per_s']:.1f} sentences/s (encode, batch_size 32, "
      f"{torch.get_num_threads()} torch threads); one sentence p50 {r['one_sentence_p50_ms']:.2f} ms")
PY

target/release/switchyard serve --models "$repo" --http 127.0.0.1:18400 --grpc 127.0.0.1:18401 \
  > "$OUT/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf -o /dev/null http://127.0.0.1:18400/v2/health/ready; do sleep 0.1; done
run() {
  local name="$1" c="$2"
  target/release/switchyard-loadtest --url http://127.0.0.1:18400 --grpc-url http://127.0.0.1:18401 \
    --model minilm --protocol "$PROTOCOL" --texts "$TEXTS" --concurrency "$c" \
    --duration "$DURATION" --warmup 2 --json > "$OUT/$name.json"
  python3 - "$OUT/$name.json" "$name" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"switchyard {sys.argv[2]:6} {r['infer_per_s']:8.1f} sentences/s  p50 {r['p50_us']/1e3:7.2f} ms  "
      f"p99 {r['p99_us']/1e3:7.2f} ms  errors {r['errors']}")
PY
}
run "c$CONCURRENCY" "$CONCURRENCY"
run c1 1
python3 - "$OUT" "$CONCURRENCY" <<'PY' | tee -a "$OUT/report.txt"
import json, sys
o, c = sys.argv[1], sys.argv[2]
st = json.load(open(f"{o}/sentence-transformers.json"))
sy = json.load(open(f"{o}/c{c}.json"))
one = json.load(open(f"{o}/c1.json"))
print(f"ratio: {sy['infer_per_s'] / st['sentences_per_s']:.2f}x sentence-transformers' sentences/s; "
      f"one sentence p50 {one['p50_us']/1e3:.2f} ms vs {st['one_sentence_p50_ms']:.2f} ms")
PY
