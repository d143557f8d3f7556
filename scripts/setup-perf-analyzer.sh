#!/usr/bin/env bash
# Triton's perf_analyzer for the interop tests, from PyPI and Debian only.
# The binary comes from the tritonclient==2.51.0 wheel: newer wheels (and the
# perf-analyzer package) need glibc 2.38, Debian 12 has 2.36. It needs libb64
# (Debian: libb64-0d) and loads libcudart.so.12 at start even on CPU (PyPI:
# nvidia-cuda-runtime-cu12). Usage: setup-perf-analyzer.sh VENV
set -euo pipefail
venv="$1"
python="${PYTHON:-python3}"
if ! ldconfig -p | grep -q 'libb64.so.0d'; then
  echo "installing Debian's libb64-0d for perf_analyzer" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq libb64-0d >/dev/null
  fi
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
  "tritonclient==2.51.0" "nvidia-cuda-runtime-cu12==12.9.79"
cudart="$(find "$venv" -name 'libcudart.so.12' | head -1)"
[ -n "$cudart" ] || { echo "libcudart.so.12 not found in $venv" >&2; exit 1; }
# A wrapper that finds its libraries, so tests run it like any command.
cat > "$venv/bin/perf_analyzer_run" <<SH
#!/bin/sh
LD_LIBRARY_PATH="$(dirname "$cudart")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$venv/bin/perf_analyzer" "\$@"
SH
chmod +x "$venv/bin/perf_analyzer_run"
"$venv/bin/perf_analyzer_run" --version >&2
