#!/usr/bin/env bash
# Throughput and p99 with OpenTelemetry tracing off, and exporting over OTLP/gRPC
# to a local receiver at sample ratios 0, 0.01 and 1 (r0, r0.01, r1; MODES can
# add b0.01 and such: batches of 8192 spans), alternating
# rounds in one run, mlp_small over HTTP binary at concurrency 32; and how many
# spans the receiver took and the server dropped. Needs `make build loadtest`,
# `make .venv-test/.done` (the receiver: loadtest/otlp-sink.py) and the peer
# harness' models (../shared/bench/setup_tools.sh).
#
#   loadtest/tracing-report.sh [OUT_DIR]      (default results/tracing-<date>)
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=tracing
. loadtest/lib.sh "${1:-}"
MODES="${MODES:-off r0 r0.01 r1}"
count="$OUT/sink-count"
rm -f "$count"
.venv-test/bin/python loadtest/otlp-sink.py 18700 "$count" 2> "$OUT/sink.log" &
sink=$!
trap 'stop_server; kill $sink 2>/dev/null || true' EXIT
# The receiver listens before the first traced mode starts.
until python3 -c 'import socket; socket.create_connection(("127.0.0.1", 18700), 1)' 2>/dev/null; do
  kill -0 $sink || { cat "$OUT/sink.log" >&2; exit 1; }
  sleep 0.1
done
spans() { cat "$count" 2>/dev/null || echo 0; }
log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); HTTP binary, concurrency 32, ${DURATION}s a run"
for round in $(seq "${ROUNDS:-3}"); do
  for mode in $MODES; do
    case $mode in
      off) serve "$mode" ;;
      r*) serve "$mode" --otlp-endpoint http://127.0.0.1:18700 --trace-sample-ratio "${mode#r}" ;;
      # bRATIO: batches of 8192 spans, as the OpenTelemetry Collector's batch processor sends.
      b*) OTEL_BSP_MAX_QUEUE_SIZE=16384 OTEL_BSP_MAX_EXPORT_BATCH_SIZE=8192 \
            serve "$mode" --otlp-endpoint http://127.0.0.1:18700 --trace-sample-ratio "${mode#b}" ;;
    esac
    before=$(spans)
    run "tracing-$mode-$round"
    if [ "$mode" != off ]; then
      dropped=$(curl -s http://127.0.0.1:18600/metrics | grep '^switchyard_trace_spans_dropped' | tr '\n' ' ' || true)
      # The stop sends what is queued.
      stop_server
      log "tracing $mode: the receiver took $(($(spans) - before)) spans; ${dropped:-no drops}"
    fi
  done
done
# Each ratio over off, all rounds summed (one round's ratio swings on a shared VM).
ratios "$MODES"
