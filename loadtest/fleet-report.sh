#!/usr/bin/env bash
# What sharing policies through etcd costs a replica at rest, and how fast a
# change reaches a fleet: three release replicas of the sample repository on
# one etcd member (Debian's, scripts/setup-etcd.sh), against one replica with
# the file store. Reports each replica's CPU over IDLE seconds with no
# requests (the watch's progress checks, lease renewals and reports), etcd's
# own CPU, and the time until every replica answers a PUT's new split (50
# changes, each on the next replica; p50 and max).
# Needs `make build` and etcd.
#
#   loadtest/fleet-report.sh [OUT_DIR]      (default results/fleet-<date>)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/fleet-$(date +%Y-%m-%d)}"
IDLE="${IDLE:-60}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
bin=target/release/switchyard
export ORT_DYLIB_PATH="$PWD/target/release/libonnxruntime.so"
echo "[$(date +%T)] machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(etcd --version | head -1)" | tee "$OUT/report.txt"
etcd --name fleet --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:18779 \
  --advertise-client-urls http://127.0.0.1:18779 --listen-peer-urls http://127.0.0.1:18780 \
  --initial-advertise-peer-urls http://127.0.0.1:18780 --initial-cluster fleet=http://127.0.0.1:18780 \
  --logger zap --log-level error > "$work/etcd.log" 2>&1 &
etcd_pid=$!; pids+=("$etcd_pid")
until ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:18779 endpoint health >/dev/null 2>&1; do sleep 0.1; done
cp -r models "$work/models"
rm -rf "$work/models/.switchyard"
start() { # NAME PORT STORE
  "$bin" serve --models "$work/models" --http "127.0.0.1:$2" --grpc "127.0.0.1:$(($2 + 1))" \
    --admin "127.0.0.1:$(($2 + 2))" --state-dir "$work/state-$1" --replica-id "$1" \
    --policy-store "$3" > "$work/$1.log" 2>&1 &
  pids+=("$!")
  until curl -sf -o /dev/null "http://127.0.0.1:$2/v2/health/ready"; do sleep 0.1; done
}
store=etcd:http://127.0.0.1:18779/fleet-report
start a 18800 "$store"; start b 18810 "$store"; start c 18820 "$store"
start file 18830 "file:$work/state-file"
settle=10
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Past the models' first seconds (warm-ups, the first scans), at rest.
sleep "$settle"
declare -A c0
for p in "${pids[@]}"; do c0[$p]=$(cpu "$p"); done
sleep "$IDLE"
tck=$(getconf CLK_TCK)
names=(etcd a b c file)
i=0
for p in "${pids[@]}"; do
  awk -v n="${names[$i]}" -v a="${c0[$p]}" -v b="$(cpu "$p")" -v t="$tck" -v s="$IDLE" \
    'BEGIN { printf "idle %-5s %6.3f s CPU in %d s (%.2f %% of a core)\n", n, (b - a) / t, s, 100 * (b - a) / t / s }' | tee -a "$OUT/report.txt"
  i=$((i + 1))
done
python3 - <<'PY' | tee -a "$OUT/report.txt"
import json, statistics, time, urllib.request
ports = [18802, 18812, 18822]
def call(port, method="GET", body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/models/mlp/traffic", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req) as r:
        return json.load(r)
took = []
for k in range(1, 51):
    want = {"1": k, "2": 100 - k}
    call(ports[k % 3], "PUT", {"weights": want})
    t = time.perf_counter()
    for p in ports:
        while call(p)["weights"] != want:
            pass
        took.append((time.perf_counter() - t) * 1000)
took.sort()
print(f"propagation to each of 3 replicas over 50 changes: p50 {statistics.median(took):.1f} ms, "
      f"max {took[-1]:.1f} ms (polled over HTTP, so each includes a GET)")
PY
echo "report: $OUT/report.txt"
