"""Starts real switchyard processes for the Python interop tests (stdlib only: each
test suite runs in its own virtualenv)."""

import os
import pathlib
import re
import subprocess
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = os.environ.get("SWITCHYARD_BIN", str(ROOT / "target" / "debug" / "switchyard"))


class Switchyard:
    """One `switchyard serve` on ephemeral ports: `http`, `grpc` and `admin` (the
    admin listener) are HOST:PORT; `models=None` serves no repository folder (an
    MLflow registry instead)."""

    def __init__(self, *extra, models=ROOT / "models", ready_timeout=60):
        repo = ["--models", str(models)] if models is not None else []
        # Tests run side by side: an ephemeral admin port, not 8003.
        admin = [] if "--admin" in extra else ["--admin", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            [BIN, "serve", *repo, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", *admin, *extra],
            stderr=subprocess.PIPE,
            text=True,
        )
        found, lines = {}, []
        want = 3 if admin else 2
        deadline = time.time() + ready_timeout
        while len(found) < want and time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"(HTTP|gRPC|admin) listening addr=(\S+)", line)
            if m:
                found[m.group(1)] = m.group(2)
        assert len(found) >= 2, "switchyard did not start:\n" + "".join(lines)
        self.http, self.grpc, self.admin = found["HTTP"], found["gRPC"], found.get("admin")
        # Keep draining the log so the server never blocks on a full pipe.
        self.lines = lines
        threading.Thread(target=lambda: [lines.append(x) for x in self.proc.stderr], daemon=True).start()
        while True:
            try:
                # The admin listener speaks plain HTTP when the ports use TLS.
                probe = self.admin or self.http
                with urllib.request.urlopen(f"http://{probe}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "switchyard not ready"
            time.sleep(0.05)

    def log(self):
        return "".join(self.lines)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def switchyard():
    """A factory: `switchyard(*flags)` starts a server, stopped with the module."""
    started = []

    def start(*extra, **kw):
        s = Switchyard(*extra, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
