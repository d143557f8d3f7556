#!/usr/bin/env bash
# The operator's tools, measured: the idle cost of the control plane's
# 5-second window sampler (CPU ticks and wake-ups of the control thread over
# IDLE seconds), how long the console's pages and GET /admin/models take to
# answer (200 sequential GETs each, after some traffic), and the wall time
# of `switchyard models` from process start to exit.
# Usage: make build && loadtest/operator-report.sh [> results/.../measure.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/switchyard}
D=$(mktemp -d); cp -r models/iris models/mlp $D/; cp -r $D/iris/1 $D/iris/2; printf '[version_policy]\nall = true\n' > $D/iris/config.toml
$BIN serve --models $D --http 127.0.0.1:19000 --grpc 127.0.0.1:19001 --admin 127.0.0.1:19003 2>"$D/serve.log" &
PID=$!
for i in $(seq 100); do curl -sf localhost:19000/v2/health/ready >/dev/null && break; sleep 0.2; done
sleep 10
ticks() { awk '{print $14+$15}' /proc/$PID/stat; }
csw() { for t in /proc/$PID/task/*; do if grep -q switchyard-cont $t/comm; then grep voluntary_ctxt_switches $t/status | head -1 | awk '{print $2}'; fi; done; }
t0=$(ticks); c0=$(csw); sleep ${IDLE:-120}; t1=$(ticks); c1=$(csw)
echo "idle ${IDLE:-120} s: $((t1-t0)) ticks of 10 ms CPU; control thread woke $((c1-c0)) times"
echo "rss: $(grep VmRSS /proc/$PID/status)"
# Some traffic so the pages have windows and drift rows.
for i in $(seq 20); do $BIN infer iris:1 --server http://127.0.0.1:19003 --data models/iris/reference.csv >/dev/null; done
sleep 6
python3 - <<'PY'
import time, urllib.request, statistics
def lat(url, n=200):
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); urllib.request.urlopen(url).read(); ts.append((time.perf_counter()-t)*1e3)
    ts.sort(); return ts[len(ts)//2], ts[int(len(ts)*0.99)-1]
for path in ["/console", "/console/models/iris", "/console/models/iris/live", "/admin/models", "/admin/models/iris", "/v2/models/iris/drift"]:
    p50,p99=lat("http://127.0.0.1:19003"+path)
    size=len(urllib.request.urlopen("http://127.0.0.1:19003"+path).read())
    print(f"GET {path}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {size} bytes")
PY
python3 - <<PY
import subprocess, time
ts=[]
for _ in range(20):
    t=time.perf_counter(); subprocess.run(["$BIN","models","--server","http://127.0.0.1:19003"],capture_output=True,check=True); ts.append((time.perf_counter()-t)*1e3)
ts.sort(); print(f"switchyard models (process start to exit, 20 runs): median {ts[10]:.1f} ms, max {ts[-1]:.1f} ms")
PY
kill $PID; wait $PID 2>/dev/null || true; rm -rf "$D"
