#!/usr/bin/env bash
# A 2,000-socket slowloris against the release build with its default bounds:
# each socket sends part of a request head and then a byte a second. Prints the
# server's resident memory and open file descriptors before, during and after
# (the header timeout, 10 s, closes every socket), what the sockets got back,
# and how fast /v2/health/ready answered meanwhile. Pauses the fuzzers of
# scripts/fuzz.sh while it measures, if any run.
#
#   loadtest/slowloris-report.sh [SOCKETS]   (needs `cargo build --release`)
set -u
cd "$(dirname "$0")/.."
N=${1:-2000}
BIN=target/release/switchyard
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime-1.31.1/libonnxruntime.so}"
pkill -STOP -f "fuzz/(target|work)/" 2>/dev/null
state=$(mktemp -d)
trap 'pkill -CONT -f "fuzz/(target|work)/" 2>/dev/null; rm -rf "$state"' EXIT
ulimit -n 8192
"$BIN" serve --models models --http 127.0.0.1:18000 --grpc 127.0.0.1:18001 \
  --admin 127.0.0.1:18003 --state-dir "$state" >/dev/null 2>&1 &
sp=$!
for _ in $(seq 150); do curl -sf localhost:18000/v2/health/ready >/dev/null && break; sleep 0.2; done
python3 - "$sp" "$N" <<'EOF'
import socket, sys, time, urllib.request

pid, n = int(sys.argv[1]), int(sys.argv[2])

def sample(what):
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
    import os
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    t = time.perf_counter()
    with urllib.request.urlopen("http://127.0.0.1:18000/v2/health/ready", timeout=10) as r:
        r.read()
    ms = (time.perf_counter() - t) * 1000
    print(f"{what:<28} RSS {rss / 1024:6.1f} MiB  fds {fds:5d}  ready in {ms:5.1f} ms", flush=True)

sample("before")
socks, opened = [], []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", 18000))
    s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHo")
    s.setblocking(False)
    socks.append(s)
    opened.append(time.time())
lifetimes = {}
start = time.time()
sample(f"{n} slow heads open")
closed, got408 = set(), 0
while time.time() - start < 15 and len(closed) < n:
    for i, s in enumerate(socks):
        if i in closed:
            continue
        try:
            data = s.recv(4096)
            if data.startswith(b"HTTP/1.1 408"):
                got408 += 1
            closed.add(i)
            lifetimes[i] = time.time() - opened[i]
            continue
        except BlockingIOError:
            pass
        except OSError:
            closed.add(i)
            continue
        try:
            s.send(b"s")
        except OSError:
            closed.add(i)
    if 4.5 < time.time() - start < 5.5:
        sample("5 s in, still dribbling")
    time.sleep(1)
took = time.time() - start
print(f"closed by the server: {len(closed)}/{n} within {took:.1f} s, {got408} with a 408")
if lifetimes:
    life = sorted(lifetimes.values())
    print(f"socket lifetime: min {life[0]:.1f} s, median {life[len(life) // 2]:.1f} s, max {life[-1]:.1f} s (deadline 10 s; seen at 1 s polls)")
for s in socks:
    s.close()
time.sleep(1)
sample("after")
EOF
kill $sp; wait $sp 2>/dev/null
