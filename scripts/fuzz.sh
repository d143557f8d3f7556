#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each under libFuzzer
# (cargo fuzz, stable Rust: no sanitizer), bounded as the server is: inputs up
# to 1 MiB, 256 MiB of resident memory (-rss_limit_mb, checked by libFuzzer's
# own thread: without a sanitizer's malloc hooks, one allocation is not capped),
# 10 s an input. The working corpus (fuzz/work/<target>, kept between runs) starts
# from fuzz/corpus/<target>, the committed one that `make test` replays; inputs
# that add coverage are merged back into it. Prints a Markdown table (target,
# wall time, CPU time, runs, corpus) and fails on any crash, leak of the bounds
# or timeout (fuzz/artifacts/). CPU time is the honest figure when the fuzzers
# share the machine (e.g. `nice -n 19 taskset -c 1 scripts/fuzz.sh ...`).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# FUZZ_BIN=DIR runs the binaries in DIR instead of building them (a copy taken
# before the sources change under a long run).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=($(ls fuzz/fuzz_targets | sed 's/\.rs$//'))
fi
bin=${FUZZ_BIN:-fuzz/target/x86_64-unknown-linux-gnu/release}
if [ -z "${FUZZ_BIN:-}" ]; then
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
    cargo fuzz build -s none 2>&1 | grep -v "^ *Compiling" >&2 || true
fi
echo "| target | time | CPU time | runs | corpus (files) |"
echo "|---|---|---|---|---|"
status=0
for t in "${targets[@]}"; do
    work=fuzz/work/$t
    mkdir -p "$work" "fuzz/artifacts/$t"
    log=fuzz/work/$t.log
    # Wall time as it ran (a run stopped early with ^C counts what it had).
    start=$(date +%s)
    if ! /usr/bin/time -f "%U %S" -o "fuzz/work/$t.cpu" "$bin/$t" "$work" "fuzz/corpus/$t" -max_total_time="$secs" -rss_limit_mb=256 \
        -max_len=1048576 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
        # A run stopped with ^C (SIGINT) exits non-zero too; it found nothing.
        if grep -q "libFuzzer: run interrupted" "$log" && [ -z "$(ls "fuzz/artifacts/$t")" ]; then
            echo "$t: stopped early, nothing found" >&2
        else
            status=1
            echo "$t: FAILED, see $log and fuzz/artifacts/$t" >&2
        fi
    fi
    took=$(( $(date +%s) - start ))
    # What adds coverage joins the committed corpus, cut to 4 KiB an input so
    # that it stays small enough to keep in git (edges only, not hit counts);
    # the rest stays in fuzz/work.
    "$bin/$t" -merge=1 -max_len=4096 -use_counters=0 "fuzz/corpus/$t" "$work" >/dev/null 2>&1 || true
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    # CPU time from the last line of time's output (a line before it says
    # when the fuzzer exited non-zero).
    cpu=$(tail -n 1 "fuzz/work/$t.cpu" 2>/dev/null | awk '{printf "%d", $1 + $2}')
    echo "| $t | ${took} s | ${cpu} s | $runs | $(ls "fuzz/corpus/$t" | wc -l) |"
done
exit $status
