"""Capture files in Parquet read back by pyarrow (what pandas and Spark read
with): one table row per request row, a float32 column per input and output
feature named as the drift profile names them, the request's id, version and
routing on every row, and the values the server was sent and answered."""

import json
import pathlib
import shutil
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[2]


def call(url, body, headers=()):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **dict(headers)})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_parquet_capture_reads_back_typed_per_feature(switchyard, tmp_path):
    repo, cap = tmp_path / "models", tmp_path / "capture"
    for v in ("1", "2"):
        shutil.copytree(ROOT / "models" / "mlp" / v, repo / "mlp" / v)
    (repo / "mlp" / "config.toml").write_text(
        f'[version_policy]\nall = true\n\n[capture]\ndir = "{cap}"\nformat = "parquet"\n'
        "max_file_bytes = 50000\n")
    s = switchyard("--shutdown-delay", "0s", models=repo)
    rng = np.random.default_rng(7)
    sent, answers = {}, {}
    for i in range(60):
        rows = rng.random((2, 16), dtype=np.float32)
        rid = f"p-{i}"
        trace = f"{i + 1:032x}" if i % 2 == 0 else None
        headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"} if trace else {}
        a = call(f"http://{s.http}/v2/models/mlp/infer",
                 {"id": rid, "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 16],
                                         "data": rows.ravel().tolist()}]}, headers.items())
        sent[rid], answers[rid] = rows, a
    s.stop()

    files = sorted(cap.rglob("*.parquet"))
    assert files and not list(cap.rglob("*.partial")), files
    table = pa.concat_tables(pq.read_table(f) for f in files)
    assert table.num_rows == 120, "a table row per request row"
    schema = table.schema
    for k in range(16):
        assert schema.field(f"input[{k}]").type == pa.float32()
    for k in range(4):
        assert schema.field(f"output[{k}]").type == pa.float32()
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert schema.field("row").type == pa.int32()
    assert schema.field("latency_ms").type == pa.float64()
    t = table.to_pydict()
    for j, rid in enumerate(t["id"]):
        r = t["row"][j]
        got = np.array([t[f"input[{k}]"][j] for k in range(16)], dtype=np.float32)
        assert np.array_equal(got, sent[rid][r]), rid
        out = answers[rid]["outputs"][0]["data"][r * 4:(r + 1) * 4]
        assert np.allclose([t[f"output[{k}]"][j] for k in range(4)], out, rtol=1e-6), rid
        assert t["version"][j] == answers[rid]["model_version"]
        assert (t["status"][j], t["routing"][j], t["role"][j]) == ("ok", "default", "primary")
        assert t["error"][j] is None
        i = int(rid[2:])
        assert t["trace_id"][j] == (f"{i + 1:032x}" if i % 2 == 0 else None), rid
