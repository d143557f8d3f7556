#!/usr/bin/env bash
# etcd and etcdctl for the fleet tests (tests/fleet.rs), from Debian's
# `etcd-server` and `etcd-client` packages (the binaries only: the tests start
# their own cluster on loopback, and no service is left running).
set -euo pipefail
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing Debian's etcd for the fleet tests" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
  # The package starts its service where there is an init system; the tests start their own.
  $sudo systemctl stop etcd 2>/dev/null || true
  $sudo systemctl disable etcd 2>/dev/null || true
fi
etcd --version 2>&1 | head -1 >&2
