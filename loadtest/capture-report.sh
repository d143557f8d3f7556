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
KIND=capture
. loadtest/lib.sh "${1:-}"
cap="${CAPTURE_DIR:-$OUT/capture}"
MODES="${MODES:-off 0.01 1.0 pq0.01 pq1.0}"
serve_mode() { # serve_mode off|RATE|pqRATE
  stop_server
  rm -rf "$cap"
  # The last run's files written back now, not during the next run.
  sync
  case "$1" in
    off) rm -f "$repo/mlp_small/config.toml" ;;
    pq*) printf '[capture]\ndir = "%s"\nformat = "parquet"\nsample_rate = %s\n' "$cap" "${1#pq}" > "$repo/mlp_small/config.toml" ;;
    *) printf '[capture]\ndir = "%s"\nsample_rate = %s\n' "$cap" "$1" > "$repo/mlp_small/config.toml" ;;
  esac
  serve "$1"
}
trap 'stop_server; rm -rf "$cap"' EXIT
log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); HTTP binary, concurrency 32, ${DURATION}s a run"
for round in $(seq "${ROUNDS:-3}"); do
  for mode in $MODES; do
    serve_mode $mode
    run "capture-$mode-$round"
    if [ "$mode" != off ]; then
      scrape=$(curl -s http://127.0.0.1:18600/metrics | grep '^switchyard_capture' || true)
      stop_server
      files=$(find "$cap" -name '*.jsonl.gz' -o -name '*.parquet' | wc -l)
      bytes=$(find "$cap" \( -name '*.jsonl.gz' -o -name '*.parquet' \) -printf '%s\n' | awk '{s+=$1} END {print s+0}')
      records=$(find "$cap" -name '*.jsonl.gz' -exec zcat {} + 2>/dev/null | wc -l)
      # Written counts files closed (at the stop, after this scrape); drops count at once.
      log "capture $mode: $files files, $bytes bytes, $records JSON Lines records; $(echo "$scrape" | grep -v '^#' | grep dropped | tr '\n' ' ')"
    fi
  done
done
# Each rate over off, all rounds summed (one round's ratio swings on a shared VM).
ratios "$MODES"
