#!/usr/bin/env bash
# Prometheus and promtool for the metrics tests, from Debian's `prometheus`
# package (the binaries only: no service is started).
set -euo pipefail
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "installing Debian's prometheus for the metrics tests" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts its service where there is an init system; the tests start their own.
  $sudo systemctl stop prometheus 2>/dev/null || true
fi
prometheus --version 2>&1 | head -1 >&2
