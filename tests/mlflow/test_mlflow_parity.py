"""The same /invocations bodies sent to a real `mlflow models serve` of the same ONNX
models (saved with mlflow.onnx) and to switchyard give equal predictions."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready at {url}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory, switchyard):
    import mlflow.onnx

    procs, urls = [], {}
    tmp = tmp_path_factory.mktemp("mlflow")
    for name in ["mlp", "iris"]:
        version = "2" if name == "mlp" else "1"
        path = tmp / name
        mlflow.onnx.save_model(onnx.load(str(ROOT / "models" / name / version / "model.onnx")), str(path))
        port = free_port()
        # mlflow starts uvicorn by name: the virtualenv's bin must be on PATH.
        env = dict(
            os.environ,
            MLFLOW_TRACKING_URI=f"file://{tmp}/mlruns",
            PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        )
        p = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(path), "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        procs.append(p)
        urls[name] = f"http://127.0.0.1:{port}"
    sy = switchyard()
    for name, url in urls.items():
        wait_ready(f"{url}/ping", procs[["mlp", "iris"].index(name)], f"mlflow models serve ({name})")
    yield urls, f"http://{sy.http}"
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def same(a, b, path="predictions"):
    """Equal structure; numbers equal at float32 precision (both run ONNX Runtime 1.31.1)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: length {len(a)} vs {len(b) if isinstance(b, list) else b}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert np.float32(a) == np.float32(b), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a} vs {b}"


rng = np.random.default_rng(3)
MLP_ROWS = rng.normal(0, 1, (3, 16)).round(4).tolist()
COLS = [f"f{i}" for i in range(16)]
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [6.1, 2.8, 4.7, 1.2]]

CASES = [
    ("mlp", {"dataframe_split": {"columns": COLS, "data": MLP_ROWS}}),
    ("mlp", {"dataframe_records": [dict(zip(COLS, r)) for r in MLP_ROWS]}),
    ("mlp", {"instances": MLP_ROWS}),
    ("mlp", {"inputs": MLP_ROWS}),
    ("iris", {"instances": IRIS_ROWS}),
    ("iris", {"inputs": IRIS_ROWS}),
]


@pytest.mark.parametrize("model, body", CASES, ids=[f"{m}-{next(iter(b))}" for m, b in CASES])
def test_same_predictions(servers, model, body):
    urls, sy = servers
    want = requests.post(f"{urls[model]}/invocations", json=body, timeout=60)
    got = requests.post(f"{sy}/models/{model}/invocations", json=body, timeout=60)
    assert want.status_code == 200, want.text
    assert got.status_code == 200, got.text
    same(got.json()["predictions"], want.json()["predictions"])


def test_csv(servers):
    urls, sy = servers
    csv = ",".join(COLS) + "\n" + "\n".join(",".join(str(v) for v in r) for r in MLP_ROWS) + "\n"
    headers = {"Content-Type": "text/csv"}
    want = requests.post(f"{urls['mlp']}/invocations", data=csv, headers=headers, timeout=60)
    got = requests.post(f"{sy}/models/mlp/invocations", data=csv, headers=headers, timeout=60)
    assert want.status_code == 200 and got.status_code == 200, (want.text, got.text)
    same(got.json()["predictions"], want.json()["predictions"])


def test_a_dataframe_that_cannot_hold_the_outputs_fails_in_both(servers):
    urls, sy = servers
    body = {"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": IRIS_ROWS}}
    want = requests.post(f"{urls['iris']}/invocations", json=body, timeout=60)
    got = requests.post(f"{sy}/models/iris/invocations", json=body, timeout=60)
    assert want.status_code >= 400, want.text
    assert got.status_code == 400 and "instances" in got.json()["error"], got.text
