"""A real Prometheus scrapes switchyard: `promtool check metrics` accepts the
exposition, and a PromQL histogram_quantile over the request histogram returns a
value (Debian's prometheus package; scripts/setup-prometheus.sh installs it)."""

import json
import pathlib
import socket
import subprocess
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
INFER = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def send(server, n):
    for _ in range(n):
        req = urllib.request.Request(f"http://{server.http}/v2/models/mlp/infer", data=INFER,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


def test_promtool_accepts_the_scrape(switchyard):
    s = switchyard()
    send(s, 20)
    text = get(f"http://{s.http}/metrics")
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_prometheus_scrapes_and_computes_a_quantile(switchyard, tmp_path):
    s = switchyard()
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['{s.http}']\n")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = ('histogram_quantile(0.99, sum by (le) '
                 '(rate(switchyard_request_duration_seconds_bucket{model="mlp"}[20s])))')
        deadline = time.time() + 90
        value = None
        while time.time() < deadline:
            send(s, 50)
            try:
                body = json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})))
                result = body["data"]["result"]
                if result and result[0]["value"][1] not in ("NaN", "+Inf"):
                    value = float(result[0]["value"][1])
                    break
            except OSError:
                pass
            time.sleep(1)
        assert value is not None, "Prometheus never computed the quantile"
        assert 0 < value <= 10, value
        up = json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?query=up"))["data"]["result"]
        assert up and up[0]["value"][1] == "1", up
        # Every query of the Grafana dashboard is valid PromQL.
        dash = json.loads((ROOT / "deploy" / "grafana" / "switchyard.json").read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$model", ".*").replace("$__rate_interval", "30s")
                body = json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
                assert body["status"] == "success", (panel["title"], expr, body)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
