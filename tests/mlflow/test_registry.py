"""Switchyard follows a real MLflow Model Registry: a `mlflow server` on loopback
(sqlite store, local artifacts served through its proxy), ONNX versions registered
with the MLflow Python API, aliases moved and deleted, versions deleted, the server
stopped and restarted."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROW = [[i / 16 for i in range(16)]]
POLL = "300ms"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_answer(version):
    sess = ort.InferenceSession(str(ROOT / "models" / "mlp" / version / "model.onnx"))
    return sess.run(None, {"input": np.array(ROW, np.float32)})[0].ravel().tolist()


class Tracking:
    """A real `mlflow server` with its store and artifacts in `tmp`."""

    def __init__(self, tmp):
        self.tmp, self.port = tmp, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.tmp}/store.db", "--artifacts-destination", f"{self.tmp}/artifacts",
             "--serve-artifacts", "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, "mlflow server exited"
            try:
                if requests.get(f"{self.uri}/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.time() < deadline, "mlflow server not ready"
            time.sleep(0.3)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    import mlflow

    t = Tracking(tmp_path_factory.mktemp("registry"))
    mlflow.set_tracking_uri(t.uri)
    yield t
    t.stop()


def register(name, version_dir):
    import mlflow
    import mlflow.onnx

    with mlflow.start_run():
        mlflow.onnx.log_model(onnx.load(str(ROOT / "models" / "mlp" / version_dir / "model.onnx")), name="model",
                              registered_model_name=name)
    from mlflow import MlflowClient
    return max(int(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'"))


def infer(s, model):
    return requests.post(f"http://{s.http}/v2/models/{model}/infer", timeout=10, json={
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": ROW[0]}]})


def served(s, model):
    """The version that answers, or None while none does."""
    return infer(s, model).json().get("model_version")


def eventually(what, check, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        assert time.time() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def test_an_alias_decides_the_version_served(mlflow_server, switchyard, tmp_path):
    from mlflow import MlflowClient

    c = MlflowClient()
    v1 = register("reg-mlp", "1")
    c.set_registered_model_alias("reg-mlp", "champion", v1)
    s = switchyard("--mlflow-uri", mlflow_server.uri, "--mlflow-model", "reg-mlp@champion",
                   "--poll-interval", POLL, "--cache-dir", str(tmp_path / "cache"), models=None)
    r = infer(s, "reg-mlp").json()
    assert r["model_version"] == str(v1)
    assert np.allclose(r["outputs"][0]["data"], local_answer("1"), atol=1e-6)

    # A new version, and the alias moves to it: served within poll + load.
    v2 = register("reg-mlp", "2")
    assert served(s, "reg-mlp") == str(v1), "the alias has not moved yet"
    moved = time.time()
    c.set_registered_model_alias("reg-mlp", "champion", v2)
    eventually("the alias's new version answers", lambda: served(s, "reg-mlp") == str(v2))
    print(f"alias move → first answer from it: {time.time() - moved:.2f} s")
    assert np.allclose(infer(s, "reg-mlp").json()["outputs"][0]["data"], local_answer("2"), atol=1e-6)
    assert (tmp_path / "cache" / "reg-mlp" / str(v2) / "model.onnx").is_file(), "downloaded into the cache"

    # The alias deleted: nothing to serve, and the model says why.
    c.delete_registered_model_alias("reg-mlp", "champion")
    eventually("the model is unavailable", lambda: infer(s, "reg-mlp").status_code == 503)
    ready = requests.get(f"http://{s.http}/v2/models/reg-mlp/ready", timeout=5)
    assert "alias 'champion'" in ready.json()["error"], ready.text
    c.set_registered_model_alias("reg-mlp", "champion", v1)
    eventually("the alias serves again", lambda: served(s, "reg-mlp") == str(v1))

    # The tracking server goes down: what is loaded keeps serving, and it says so.
    mlflow_server.stop()
    time.sleep(1)
    assert served(s, "reg-mlp") == str(v1)
    eventually("the outage is logged", lambda: "cannot list models" in s.log())
    mlflow_server.start()
    c.set_registered_model_alias("reg-mlp", "champion", v2)
    eventually("polling resumed", lambda: served(s, "reg-mlp") == str(v2))


def test_latest_versions_tags_and_deletions(mlflow_server, switchyard, tmp_path):
    from mlflow import MlflowClient
    import mlflow.pyfunc

    c = MlflowClient()
    register("tagged-mlp", "1")
    v2 = register("tagged-mlp", "2")
    # Without --mlflow-model: the registered models tagged switchyard.serve=true.
    s = switchyard("--mlflow-uri", mlflow_server.uri, "--poll-interval", POLL,
                   "--cache-dir", str(tmp_path / "cache"), models=None)
    assert infer(s, "tagged-mlp").status_code == 404, "not tagged yet"
    c.set_registered_model_tag("tagged-mlp", "switchyard.serve", "true")
    eventually("the tagged model serves its latest version",
               lambda: served(s, "tagged-mlp") == str(v2))

    # The latest version deleted: the one before it serves.
    c.delete_model_version("tagged-mlp", str(v2))
    eventually("the previous version serves", lambda: served(s, "tagged-mlp") == str(v2 - 1))

    # A version that is not ONNX (a pickled python model) is refused, never loaded;
    # the ONNX version keeps serving.
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name="tagged-mlp")
    pickled = max(int(v.version) for v in c.search_model_versions("name='tagged-mlp'"))
    eventually("the pickled version is reported", lambda: requests.get(
        f"http://{s.http}/v2/models/tagged-mlp/versions/{pickled}/ready", timeout=5).status_code == 503)
    reason = requests.get(f"http://{s.http}/v2/models/tagged-mlp/versions/{pickled}/ready", timeout=5).json()["error"]
    assert "no onnx flavour" in reason and "never loads pickles" in reason, reason
    assert served(s, "tagged-mlp") == str(v2 - 1)

    # Untagged: it goes away.
    c.delete_registered_model_tag("tagged-mlp", "switchyard.serve")
    eventually("the untagged model is gone", lambda: infer(s, "tagged-mlp").status_code == 404)


def test_aliases_weight_a_canary(mlflow_server, switchyard, tmp_path):
    from collections import Counter
    from mlflow import MlflowClient

    c = MlflowClient()
    v1 = register("canary-mlp", "1")
    v2 = register("canary-mlp", "2")
    c.set_registered_model_alias("canary-mlp", "champion", v1)
    c.set_registered_model_alias("canary-mlp", "challenger", v2)
    s = switchyard("--mlflow-uri", mlflow_server.uri, "--mlflow-model", "canary-mlp",
                   "--poll-interval", POLL, "--cache-dir", str(tmp_path / "cache"), models=None)
    # Both aliased versions serve; the policy weights them by alias.
    url = f"http://{s.admin}/admin/models/canary-mlp/traffic"
    r = requests.put(url, json={"weights": {"champion": 80, "challenger": 20}}, timeout=10)
    assert r.status_code == 200, r.text
    assert requests.get(url, timeout=5).json()["aliases"] == {"champion": v1, "challenger": v2}
    counts = Counter(served(s, "canary-mlp") for _ in range(400))
    assert 0.12 < counts[str(v2)] / 400 < 0.28, counts
    assert set(counts) == {str(v1), str(v2)}, counts

    # The challenger alias moves to a new version: it takes over the challenger's share.
    v3 = register("canary-mlp", "1")
    c.set_registered_model_alias("canary-mlp", "challenger", v3)
    eventually("the new challenger answers", lambda: str(v3) in {served(s, "canary-mlp") for _ in range(40)})
    counts = Counter(served(s, "canary-mlp") for _ in range(400))
    assert set(counts) == {str(v1), str(v3)}, counts
    assert 0.12 < counts[str(v3)] / 400 < 0.28, counts
