"""switchyard-loadtest (loadtest/) against a real server: every protocol, closed and
open loop, answers counted with no errors."""

import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LOADTEST = os.environ.get("SWITCHYARD_LOADTEST", str(ROOT / "target" / "debug" / "switchyard-loadtest"))


@pytest.fixture(scope="module")
def server(switchyard):
    return switchyard()


@pytest.mark.parametrize(
    "protocol, extra",
    [("http", []), ("http-binary", ["--concurrency", "4"]), ("grpc", ["--concurrency", "4"]),
     ("grpc", ["--concurrency", "8", "--connections", "2", "--threads", "2"]),
     ("http", ["--rate", "200"]), ("grpc", ["--rate", "200", "--rows", "3"])],
)
def test_loadtest_runs_clean(server, protocol, extra):
    out = subprocess.run(
        [LOADTEST, "--url", f"http://{server.http}", "--grpc-url", f"http://{server.grpc}",
         "--protocol", protocol, "--model", "mlp", "--duration", "1", "--warmup", "0.2", "--json", *extra],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ok"] > 0 and r["errors"] == 0, r
    assert r["p50_us"] <= r["p99_us"] <= r["max_us"], r
    if "--rate" in extra:
        assert abs(r["infer_per_s"] - 200) < 20, r
    if "--connections" in extra:
        assert r["connections"] == 2, r


def test_loadtest_reports_errors_by_status(server, tmp_path):
    body = tmp_path / "bad.json"
    body.write_text(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}))
    out = subprocess.run(
        [LOADTEST, "--url", f"http://{server.http}", "--model", "mlp", "--duration", "0.5", "--warmup", "0",
         "--input-file", str(body), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0, "no request succeeded"
    assert "HTTP 400" in out.stderr, out.stderr
