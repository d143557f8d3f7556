#!/usr/bin/env bash
# The cost of TLS: mlp (the sample repository) over HTTP and gRPC, plaintext
# and TLS (a P-256 certificate made here with openssl), at concurrency 1 and 64,
# driven by the same client (perf_analyzer from PyPI, `make .venv-pa/.done`),
# alternating plain TLS plain TLS so that the machine's drift falls on both.
# Prints one line per point: throughput and p50 latency as perf_analyzer
# measures them (client side, a new connection per client thread). Pauses the
# fuzzers of scripts/fuzz.sh while it measures, if any run.
#
#   loadtest/tls-report.sh [ROUNDS]   (needs `cargo build --release`)
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
BIN=target/release/switchyard
PA=$PWD/.venv-pa/bin/perf_analyzer_run
[ -x "$BIN" ] && [ -x "$PA" ] || { echo "needs $BIN and $PA" >&2; exit 1; }
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime-1.31.1/libonnxruntime.so}"
pkill -STOP -f "fuzz/(target|work)/" 2>/dev/null
work=$(mktemp -d)
trap 'pkill -CONT -f "fuzz/(target|work)/" 2>/dev/null; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
for round in $(seq "$ROUNDS"); do
  for mode in plain tls; do
    flags=() scheme=http pa_tls=()
    if [ $mode = tls ]; then
      flags=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
      scheme=https
    fi
    "$BIN" serve --models models --http 127.0.0.1:18000 --grpc 127.0.0.1:18001 \
      --admin 127.0.0.1:18003 --state-dir "$work/state" "${flags[@]}" >/dev/null 2>&1 &
    sp=$!
    for _ in $(seq 150); do curl -sf localhost:18003/v2/health/ready >/dev/null && break; sleep 0.2; done
    for proto in http grpc; do
      if [ $proto = http ]; then
        url=$scheme://127.0.0.1:18000
        [ $mode = tls ] && pa_tls=(--ssl-https-ca-certificates-file "$work/cert.pem")
      else
        url=127.0.0.1:18001
        [ $mode = tls ] && pa_tls=(--ssl-grpc-use-ssl true --ssl-grpc-root-certifications-file "$work/cert.pem")
      fi
      for c in 1 64; do
        out=$("$PA" -m mlp -u "$url" -i $proto "${pa_tls[@]}" --concurrency-range $c \
          --measurement-interval 3000 --percentile 50 --max-trials 5 --stability-percentage 999 2>&1)
        line=$(echo "$out" | grep -E "^Concurrency: $c," | tail -1)
        echo "round $round $mode $proto c=$c ${line:-FAILED: $(echo "$out" | tail -2)}"
      done
      pa_tls=()
    done
    kill $sp; wait $sp 2>/dev/null
  done
done
