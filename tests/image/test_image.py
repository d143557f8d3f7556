"""The container image run as Kubernetes runs it: uid 65532, a read-only root,
no capabilities, the sample repository mounted read-only at /mnt/models, a
tmpfs for state. Real clients (tritonclient HTTP and gRPC) call it at the
container's own address, as a Service would. IMAGE names the image
(make image-test builds it with scripts/image.sh)."""

import http.client
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE", "switchyard:test")
# The small models of the sample repository (MiniLM's 90 MB adds nothing here).
MODELS = ["iris", "identity", "mixed", "mlp", "mlp_safetensors"]
GRACE = 40  # the Deployment's terminationGracePeriodSeconds


def docker(*args, check=True, timeout=120):
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for m in MODELS:
        shutil.copytree(ROOT / "models" / m, repo / m)
    # The container's user is not the owner: it reads, as from a volume.
    for p in [repo, *repo.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    name = f"switchyard-image-test-{os.getpid()}"
    started = time.monotonic()
    try:
        ip = run_until_ready(name, ["--user", "65532:65532", "--security-opt", "no-new-privileges",
                                    "-v", f"{repo}:/mnt/models:ro", IMAGE], 8000, "/v2/health/ready")
        print(f"\nstart to ready: {time.monotonic() - started:.2f} s (docker run to /v2/health/ready 200)")
        yield name, ip
    finally:
        docker("rm", "-f", name, check=False)


def get(ip, port, path):
    with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=5) as r:
        return r.status, r.read()


def test_the_image_declares_its_contract():
    cfg = json.loads(docker("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["switchyard"]
    assert cfg["Cmd"][0] == "serve"
    assert set(cfg["ExposedPorts"]) == {"8000/tcp", "8001/tcp", "8002/tcp"}
    assert "/var/lib/switchyard" in cfg["Volumes"]
    labels = cfg["Labels"]
    for key in ["title", "version", "revision", "licenses"]:
        assert labels.get(f"org.opencontainers.image.{key}"), key


def test_health_and_metadata(container):
    _, ip = container
    assert get(ip, 8000, "/v2/health/live")[0] == 200
    status, body = get(ip, 8000, "/v2")
    assert status == 200 and json.loads(body)["name"] == "switchyard"
    meta = json.loads(get(ip, 8000, "/v2/models/iris")[1])
    assert meta["inputs"][0]["shape"][-1] == 4


def test_inference_over_http_and_grpc(container):
    _, ip = container
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    answers = []
    for client, mod in [
        (httpclient.InferenceServerClient(f"{ip}:8000"), httpclient),
        (grpcclient.InferenceServerClient(f"{ip}:8001"), grpcclient),
    ]:
        assert client.is_server_ready()
        inp = mod.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("iris", [inp])
        out = res.get_response()["outputs"] if mod is httpclient else res.get_response().outputs
        name = out[0]["name"] if mod is httpclient else out[0].name
        answers.append(res.as_numpy(name))
    assert answers[0].shape[0] == 2
    np.testing.assert_array_equal(answers[0], answers[1])


def test_metrics_on_their_own_port(container):
    _, ip = container
    status, body = get(ip, 8002, "/metrics")
    assert status == 200
    # The HPA and KEDA manifests scale on these.
    assert b"switchyard_queue_depth" in body
    assert b"switchyard_queue_duration_seconds" in body


def test_the_process_is_not_root(container):
    name, _ = container
    pid = docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
    assert set(uids) == {"65532"} and set(gids) == {"65532"}, status
    caps = next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1]
    assert int(caps, 16) == 0
    rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    print(f"\nidle RSS in the container: {rss_kib / 1024:.1f} MiB ({len(MODELS)} models loaded)")


def test_docker_stop_answers_what_is_in_flight_and_exits_0(container):
    """SIGTERM from `docker stop` (as the kubelet sends it): readiness turns
    503, requests keep being answered through the shutdown delay, the process
    exits 0 well within the grace period. The callers stop sending new
    requests a moment after readiness drops, as endpoints would."""
    name, ip = container
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    )
    answered, lost, after_term = [], [], []
    sending = threading.Event()
    sending.set()
    term_at = []

    def call():
        while sending.is_set():
            conn = http.client.HTTPConnection(ip, 8000, timeout=20)
            try:
                conn.connect()
            except ConnectionRefusedError:
                # The listeners are closed: nothing was sent, nothing lost.
                return
            try:
                conn.request("POST", "/v2/models/iris/infer", body, {"Content-Type": "application/json"})
                status = conn.getresponse().status
                answered.append(status)
                if term_at:
                    after_term.append(status)
            except OSError as e:
                lost.append(repr(e))
            finally:
                conn.close()

    callers = [threading.Thread(target=call) for _ in range(4)]
    for t in callers:
        t.start()
    time.sleep(0.5)
    stopped = {}

    def stop():
        t0 = time.monotonic()
        term_at.append(t0)
        stopped["proc"] = docker("stop", "-t", str(GRACE), name, timeout=GRACE + 30)
        stopped["took"] = time.monotonic() - t0

    stopper = threading.Thread(target=stop)
    stopper.start()
    # Readiness turns 503 at once; the endpoints would drop the pod then.
    deadline = time.monotonic() + 5
    ready = 200
    while ready == 200 and time.monotonic() < deadline:
        try:
            get(ip, 8000, "/v2/health/ready")
        except urllib.error.HTTPError as e:
            ready = e.code
        time.sleep(0.05)
    assert ready == 503
    time.sleep(1.0)
    sending.clear()
    for t in callers:
        t.join(30)
    stopper.join(GRACE + 30)
    code = docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    logs = docker("logs", name, check=False).stderr
    assert not lost, f"requests without an answer: {lost[:5]}"
    assert set(answered) == {200}, answered
    assert after_term, "no request was served after SIGTERM"
    assert code == "0", f"exit code {code}:\n{logs[-3000:]}"
    assert stopped["took"] < GRACE, stopped["took"]
    print(f"\ndocker stop: {stopped['took']:.1f} s, {len(answered)} answered ({len(after_term)} after SIGTERM), exit 0")


def run_until_ready(name, args, port, path, timeout=90):
    """Starts a container as Kubernetes would (read-only root, no
    capabilities, a tmpfs for state) with `args`, and waits for `path` on
    `port` to answer 200; returns its address on Docker's bridge."""
    docker("run", "-d", "--name", name, "--read-only", "--cap-drop", "ALL",
           "--tmpfs", "/var/lib/switchyard:uid=65532,gid=65532,mode=0700", *args)
    ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name).stdout.strip()
    assert ip, "the container has no address on Docker's bridge"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(ip, port, path)[0] == 200:
                return ip
        except OSError:
            pass
        running = docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        assert running == "true" and time.monotonic() < deadline, (
            "not ready:\n" + docker("logs", name, check=False).stderr[-4000:]
        )
        time.sleep(0.1)


def flat_iris(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(ROOT / "models" / "iris" / "1", model)
    for p in [tmp_path, model, *model.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return model


def test_sagemaker_runs_serve_with_the_model_at_opt_ml_model(tmp_path):
    """What SageMaker does: `docker run IMAGE serve`, the model at
    /opt/ml/model, traffic on 8080."""
    name = f"switchyard-image-sagemaker-{os.getpid()}"
    try:
        ip = run_until_ready(name, ["-v", f"{flat_iris(tmp_path)}:/opt/ml/model:ro", IMAGE, "serve"], 8080, "/ping")
        req = urllib.request.Request(
            f"http://{ip}:8080/invocations",
            data=json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode(),
            headers={"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "id=7"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert r.headers["X-Amzn-SageMaker-Custom-Attributes"] == "id=7"
            assert json.loads(r.read())["predictions"]["label"] == [0]
    finally:
        docker("rm", "-f", name, check=False)


def test_vertex_ai_routes_in_the_image(tmp_path):
    name = f"switchyard-image-vertex-{os.getpid()}"
    env = ["-e", "AIP_HTTP_PORT=8080", "-e", "AIP_HEALTH_ROUTE=/health", "-e", "AIP_PREDICT_ROUTE=/predict",
           "-e", "AIP_MODE=PREDICTION"]
    try:
        ip = run_until_ready(name, [*env, "-v", f"{flat_iris(tmp_path)}:/mnt/models:ro", IMAGE], 8080, "/health")
        req = urllib.request.Request(
            f"http://{ip}:8080/predict",
            data=json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]], "parameters": {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert len(json.loads(r.read())["predictions"]) == 1
    finally:
        docker("rm", "-f", name, check=False)


def test_sagemaker_multi_model_endpoint_in_the_image(tmp_path):
    """A multi-model endpoint: models unpacked under /opt/ml/models, loaded,
    invoked and unloaded over SageMaker's API."""
    name = f"switchyard-image-mme-{os.getpid()}"
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(ROOT / "models" / "iris", models / "abc123" / "model")
    for p in [tmp_path, *tmp_path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)

    def call(method, path, body=None):
        req = urllib.request.Request(f"http://{ip}:8080{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    try:
        ip = run_until_ready(name, ["-e", "SAGEMAKER_MULTI_MODEL=true", "-v", f"{models}:/opt/ml/models:ro",
                                    IMAGE, "serve"], 8080, "/ping")
        url = "/opt/ml/models/abc123/model"
        assert call("POST", "/models", {"model_name": "iris", "url": url})[0] == 200
        assert call("POST", "/models", {"model_name": "iris", "url": url})[0] == 409
        assert json.loads(call("GET", "/models")[1])["models"] == [{"modelName": "iris", "modelUrl": url}]
        status, body = call("POST", "/models/iris/invoke", {"instances": [[5.1, 3.5, 1.4, 0.2]]})
        assert status == 200 and json.loads(body)["predictions"]["label"] == [0]
        assert call("DELETE", "/models/iris")[0] == 200
        assert call("POST", "/models/iris/invoke", {"instances": [[5.1, 3.5, 1.4, 0.2]]})[0] == 404
        assert call("POST", "/models", {"model_name": "etc", "url": "/etc"})[0] == 400
    finally:
        docker("rm", "-f", name, check=False)
