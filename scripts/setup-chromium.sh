#!/usr/bin/env bash
# Chromium and its ChromeDriver for the console's browser test (tests/console),
# from Debian's `chromium` and `chromium-driver` packages: Selenium drives the
# system browser, so nothing is downloaded at test time.
set -euo pipefail
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing Debian's chromium and chromium-driver for the console test" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
fi
# Debian's launcher script warns on stderr while it reads /dev/shm's size; keep the version line.
chromium --version 2>/dev/null | head -1 >&2
chromedriver --version | head -1 >&2
