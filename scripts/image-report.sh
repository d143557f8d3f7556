#!/usr/bin/env bash
# The image's figures for the README: size on disk and compressed (docker save
# | gzip), start-to-ready of the container serving the whole sample
# repository (models/, MiniLM included; `docker run` to the first 200 from
# /v2/health/ready, RUNS times), and resident memory once idle.
#   scripts/image-report.sh [IMAGE] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v bc >/dev/null || { echo "image-report: needs bc (apt-get install bc)" >&2; exit 1; }
image=${1:-switchyard:0.1.0}
runs=${2:-5}
repo=$(mktemp -d)
trap 'rm -rf "$repo"; docker rm -f sy-report >/dev/null 2>&1 || true' EXIT
# A copy, readable by uid 65532: tests and reports never touch models/.
cp -r models/. "$repo/"
rm -rf "$repo/.switchyard"
chmod -R a+rX "$repo"
size=$(docker image inspect -f '{{.Size}}' "$image")
gz=$(docker save "$image" | gzip -6 | wc -c)
echo "| image | on disk | compressed (docker save, gzip -6) |"
echo "|---|---|---|"
printf '| %s | %.1f MB | %.1f MB |\n' "$image" "$(echo "$size/1000000" | bc -l)" "$(echo "$gz/1000000" | bc -l)"
echo
echo "| run | start to ready (s) | idle RSS (MiB) |"
echo "|---|---|---|"
for i in $(seq "$runs"); do
    t0=$(date +%s.%N)
    docker run -d --name sy-report --read-only --user 65532:65532 --cap-drop ALL \
        --tmpfs /var/lib/switchyard:uid=65532,gid=65532,mode=0700 \
        -v "$repo:/mnt/models:ro" "$image" >/dev/null
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' sy-report)
    deadline=$((SECONDS + 120))
    until curl -fsS -o /dev/null "http://$ip:8000/v2/health/ready" 2>/dev/null; do
        if [ "$(docker inspect -f '{{.State.Running}}' sy-report)" != true ] || [ $SECONDS -gt $deadline ]; then
            echo "image-report: the container did not become ready" >&2
            docker logs sy-report 2>&1 | tail -20 >&2
            exit 1
        fi
        sleep 0.02
    done
    t1=$(date +%s.%N)
    sleep 5
    pid=$(docker inspect -f '{{.State.Pid}}' sy-report)
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    printf '| %d | %.2f | %.1f |\n' "$i" "$(echo "$t1-$t0" | bc -l)" "$(echo "$rss/1024" | bc -l)"
    docker rm -f sy-report >/dev/null
done
