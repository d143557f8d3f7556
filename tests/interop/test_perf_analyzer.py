"""Triton's perf_analyzer (from the tritonclient 2.51.0 wheel) drives switchyard for a
few seconds over HTTP and gRPC: it reads the model configuration first, then must
finish with no errors."""

import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PERF_ANALYZER = os.environ.get("PERF_ANALYZER", str(ROOT / ".venv-pa" / "bin" / "perf_analyzer_run"))


@pytest.fixture(scope="module")
def addrs(switchyard):
    s = switchyard()
    return {"HTTP": s.http, "gRPC": s.grpc}


# minilm: a BYTES input of one text a row, which the configuration shows as dims [1]
# reshaped to [] (as Triton does); perf_analyzer sends [batch, 1] with random text.
@pytest.mark.parametrize("protocol, model", [("http", "iris"), ("grpc", "iris"), ("http", "mlp"), ("grpc", "mlp"),
                                             ("http", "minilm"), ("grpc", "minilm")])
def test_perf_analyzer_runs_clean(addrs, protocol, model):
    url = addrs["HTTP" if protocol == "http" else "gRPC"]
    out = subprocess.run(
        [PERF_ANALYZER, "-m", model, "-u", url, "-i", protocol, "--concurrency-range", "1:4:3",
         "--measurement-interval", "1000", "--max-trials", "5",
         # Interop, not a benchmark: any stable-enough window will do on a noisy machine.
         "--stability-percentage", "999"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    rows = re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec", text)
    assert [c for c, _ in rows] == ["1", "4"], text
    assert all(float(t) > 0 for _, t in rows), text
    assert "error" not in text.lower(), text
