"""Live drift against the iris baseline (models/iris/1/baseline.json, written by
`switchyard profile` from models/iris/reference.csv): the server's statistics equal
numpy/scipy's on the same rows and bins, traffic drawn from the training data
stays below PSI 0.1, and shifting one feature by a standard deviation raises its
PSI above 0.25 while the others stay below 0.1."""

import json
import pathlib
import shutil
import urllib.request

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, wasserstein_distance

ROOT = pathlib.Path(__file__).resolve().parents[2]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def call(url, body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def send(s, rows):
    for i in range(0, len(rows), 50):
        part = rows[i:i + 50]
        call(f"http://{s.http}/v2/models/iris/infer",
             {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(part.shape), "data": part.ravel().tolist()}]})


def report_after(s, seen):
    """The drift report once the monitor has binned `seen` rows (it works off the request path)."""
    import time
    deadline = time.time() + 30
    while True:
        r = call(f"http://{s.http}/v2/models/iris/versions/1/drift")
        if r["seen"] >= seen:
            return r
        assert time.time() < deadline, r["seen"]
        time.sleep(0.05)


def filled(p):
    p = np.asarray(p, dtype=float).copy()
    p[p == 0] = 0.0001
    return p


def reference_stats(feature, values):
    """numpy/scipy on the rows sent, binned with the profile's edges."""
    if feature["type"] == "numeric":
        edges = np.asarray(feature["edges"])
        bins = np.digitize(values, edges[1:-1], right=False)
        ref = np.asarray(feature["proportions"])
    else:
        cats = feature["categories"]
        bins = np.array([cats.index(int(v)) if int(v) in cats else len(cats) for v in values])
        ref = np.asarray(feature["proportions"] + [0.0])
    counts = np.bincount(bins, minlength=len(ref)).astype(float)
    cur = counts / counts.sum()
    r, c = filled(ref), filled(cur)
    out = {"psi": float(np.sum((c - r) * np.log(c / r))),
           "jensen_shannon": float(jensenshannon(r, c))}
    if feature["type"] == "numeric":
        out["ks"] = float(np.max(np.abs(np.cumsum(ref) - np.cumsum(cur))))
        centres = (edges[:-1] + edges[1:]) / 2
        w = wasserstein_distance(centres, centres, u_weights=ref + 1e-300, v_weights=cur + 1e-300)
        out["wasserstein"] = float(w / feature["std"]) if feature["std"] > 0 else float(w)
    else:
        out["chi_square"] = float(chisquare(counts, r / r.sum() * counts.sum()).statistic)
    return out


def test_live_drift_matches_scipy_and_flags_a_shifted_feature(switchyard, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "iris", repo / "iris")
    (repo / "iris" / "config.toml").write_text("[drift]\nwindow = 1000\n")
    s = switchyard(models=repo)
    profile = json.loads((repo / "iris" / "1" / "baseline.json").read_text())
    reference = np.loadtxt(ROOT / "models" / "iris" / "reference.csv", delimiter=",", skiprows=1, dtype=np.float32)
    rng = np.random.default_rng(7)

    # 1000 rows drawn from the training data: no feature drifts.
    rows = reference[rng.integers(0, len(reference), 1000)]
    send(s, rows)
    report = report_after(s, 1000)
    assert report["rows"] == 1000, report
    by_name = {f["feature"]: f for f in report["features"]}
    for j, name in enumerate(FEATURES):
        got = by_name[name]
        want = reference_stats(next(f for f in profile["features"] if f["name"] == name), rows[:, j])
        for stat, value in want.items():
            assert abs(got[stat] - value) <= 1e-6, (name, stat, got[stat], value)
        assert got["psi"] < 0.1, (name, got["psi"])
    labels = np.concatenate([np.asarray(call(
        f"http://{s.http}/v2/models/iris/infer",
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [50, 4], "data": rows[i:i + 50].ravel().tolist()}],
         "outputs": [{"name": "label"}]})["outputs"][0]["data"]) for i in range(0, 1000, 50)])
    assert not report["alert"], report

    # The same, with sepal_length shifted by one standard deviation: the window
    # (1000 rows) now holds only shifted rows.
    shifted = rows.copy()
    shifted[:, 0] += reference[:, 0].std()
    send(s, shifted)
    report = report_after(s, 2000)
    by_name = {f["feature"]: f for f in report["features"]}
    assert by_name["sepal_length"]["psi"] > 0.25, by_name["sepal_length"]
    for name in FEATURES[1:]:
        assert by_name[name]["psi"] < 0.1, (name, by_name[name]["psi"])
    want = reference_stats(next(f for f in profile["features"] if f["name"] == "sepal_length"), shifted[:, 0])
    for stat, value in want.items():
        assert abs(by_name["sepal_length"][stat] - value) <= 1e-6, (stat, by_name["sepal_length"][stat], value)
    assert report["drifted_share"] == 0.25 and not report["alert"], report
    # Prediction drift: the label's categories, checked with scipy's chi-square.
    assert "label" in by_name and "chi_square" in by_name["label"]
    assert len(labels) == 1000

    # The same numbers as Prometheus gauges.
    with urllib.request.urlopen(f"http://{s.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    line = next(l for l in text.splitlines() if l.startswith("switchyard_drift_score{")
                and 'feature="sepal_length"' in l and 'statistic="psi"' in l)
    assert abs(float(line.split()[-1]) - by_name["sepal_length"]["psi"]) < 1e-9, line


def test_rows_that_are_not_feature_vectors_are_summarised_by_mean_and_l2(switchyard, tmp_path):
    import subprocess

    repo = tmp_path / "models"
    (repo / "grid" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "grid_mean" / "model.onnx", repo / "grid" / "1" / "model.onnx")
    rng = np.random.default_rng(3)
    reference = rng.normal(0.0, 1.0, (2000, 2, 3)).astype(np.float32)
    np.save(tmp_path / "reference.npy", reference)
    import os
    binary = os.environ.get("SWITCHYARD_BIN", str(ROOT / "target" / "debug" / "switchyard"))
    out = subprocess.run([binary, "profile", "--model", str(repo / "grid" / "1"), "--data", str(tmp_path / "reference.npy")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    profile = json.loads((repo / "grid" / "1" / "baseline.json").read_text())
    names = [f["name"] for f in profile["features"]]
    assert names == ["input:mean", "input:l2", "score"], names
    s = switchyard(models=repo)

    def send_grid(rows):
        for i in range(0, len(rows), 50):
            part = rows[i:i + 50]
            call(f"http://{s.http}/v2/models/grid/infer",
                 {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(part.shape), "data": part.ravel().tolist()}]})

    def report_grid(seen):
        import time
        deadline = time.time() + 30
        while True:
            r = call(f"http://{s.http}/v2/models/grid/versions/1/drift")
            if r["seen"] >= seen:
                return r
            assert time.time() < deadline
            time.sleep(0.05)

    live = rng.normal(0.0, 1.0, (1000, 2, 3)).astype(np.float32)
    send_grid(live)
    by_name = {f["feature"]: f for f in report_grid(1000)["features"]}
    flat = live.reshape(1000, -1).astype(np.float64)
    for name, values in [("input:mean", flat.mean(axis=1)), ("input:l2", np.sqrt((flat ** 2).sum(axis=1)))]:
        want = reference_stats(next(f for f in profile["features"] if f["name"] == name), values)
        for stat, value in want.items():
            assert abs(by_name[name][stat] - value) <= 1e-6, (name, stat, by_name[name][stat], value)
        assert by_name[name]["psi"] < 0.1, (name, by_name[name]["psi"])
    send_grid(live + 1.0)
    by_name = {f["feature"]: f for f in report_grid(2000)["features"]}
    assert by_name["input:mean"]["psi"] > 0.25, by_name["input:mean"]
    assert by_name["score"]["psi"] > 0.25, "the prediction drifts with it"


def test_parquet_reference_data_profiles_as_its_csv_does(tmp_path):
    """pyarrow writes iris' reference data as Parquet (snappy, zstd, gzip): the
    profile is the one the CSV gives; a text column is refused by name."""
    import os
    import subprocess

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    binary = os.environ.get("SWITCHYARD_BIN", str(ROOT / "target" / "debug" / "switchyard"))

    def profile(data, out):
        shutil.copytree(ROOT / "models" / "iris", tmp_path / out)
        r = subprocess.run([binary, "profile", "--model", str(tmp_path / out / "1"), "--data", str(data),
                            "--out", str(tmp_path / f"{out}.json")], capture_output=True, text=True, timeout=120)
        return r, (json.loads((tmp_path / f"{out}.json").read_text()) if r.returncode == 0 else None)

    r, want = profile(ROOT / "models" / "iris" / "reference.csv", "csv")
    assert r.returncode == 0, r.stderr
    table = pacsv.read_csv(ROOT / "models" / "iris" / "reference.csv")
    for codec in ["snappy", "zstd", "gzip"]:
        pq.write_table(table, tmp_path / f"{codec}.parquet", compression=codec)
        r, got = profile(tmp_path / f"{codec}.parquet", codec)
        assert r.returncode == 0, r.stderr
        assert got == want, codec

    pq.write_table(table.append_column("species", pa.array(["setosa"] * len(table))), tmp_path / "text.parquet")
    r, _ = profile(tmp_path / "text.parquet", "text")
    assert r.returncode != 0
    assert "column 'species' is not numeric" in r.stderr, r.stderr
