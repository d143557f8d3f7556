"""The real tritonclient.http (from PyPI) against a real switchyard process: metadata and JSON infer."""

import json
import os
import pathlib
import re
import subprocess
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("SWITCHYARD_BIN", str(ROOT / "target" / "debug" / "switchyard"))


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(
        [BIN, "serve", "--models", str(ROOT / "models"), "--http", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    addr = None
    lines = []
    deadline = time.time() + 60
    while addr is None and time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"HTTP listening addr=(\S+)", line)
        if m:
            addr = m.group(1)
    assert addr, "server did not start:\n" + "".join(lines)
    # Keep draining the log so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    client = httpclient.InferenceServerClient(url=addr)
    while not client.is_server_ready():
        assert time.time() < deadline, "server not ready"
        time.sleep(0.05)
    yield client
    client.close()
    proc.terminate()
    proc.wait(timeout=15)


def expected():
    return json.loads((ROOT / "models" / "expected.json").read_text())


def test_server_metadata_and_health(server):
    assert server.is_server_live()
    assert server.is_server_ready()
    meta = server.get_server_metadata()
    assert meta["name"] == "switchyard"
    assert "extensions" in meta


def test_model_metadata(server):
    assert server.is_model_ready("iris")
    assert server.is_model_ready("mlp", "1")
    assert not server.is_model_ready("nope")
    meta = server.get_model_metadata("iris")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert server.get_model_metadata("mlp", "1")["versions"] == ["1"]


def test_json_infer_matches_python_onnxruntime(server):
    case = expected()["iris"][0]
    x = np.array(case["inputs"]["input"]["data"], dtype=np.float32).reshape(case["inputs"]["input"]["shape"])
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [
        httpclient.InferRequestedOutput("label", binary_data=False),
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = server.infer("iris", [inp], outputs=outs, request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    want = case["outputs"]
    np.testing.assert_array_equal(result.as_numpy("label"), np.array(want["label"]["data"], dtype=np.int64))
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"),
        np.array(want["probabilities"]["data"], dtype=np.float32).reshape(want["probabilities"]["shape"]),
    )


def test_mixed_types_and_explicit_version(server):
    case = expected()["mixed"][0]
    inputs = []
    for name, t in case["inputs"].items():
        dtype = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "BYTES": np.object_}[t["datatype"]]
        arr = np.array(t["data"], dtype=dtype).reshape(t["shape"])
        i = httpclient.InferInput(name, list(arr.shape), t["datatype"])
        i.set_data_from_numpy(arr, binary_data=False)
        inputs.append(i)
    outs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in case["outputs"]]
    result = server.infer("mixed", inputs, model_version="1", outputs=outs)
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("total"), np.array(case["outputs"]["total"]["data"], dtype=np.int64))
    np.testing.assert_array_equal(result.as_numpy("positive").reshape(-1), np.array(case["outputs"]["positive"]["data"]))
    tags = [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy("tag_out").reshape(-1)]
    assert tags == case["outputs"]["tag_out"]["data"]


def test_errors_reach_the_client_with_their_reason(server):
    inp = httpclient.InferInput("input", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32), binary_data=False)
    with pytest.raises(InferenceServerException, match=r"shape \[1, 3\] does not match"):
        server.infer("iris", [inp])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        server.get_model_metadata("nope")
