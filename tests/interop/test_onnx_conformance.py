"""Conformance over a broad corpus: every ONNX node test of the onnx wheel (its
test cases, about 1,900 one-operator models with inputs, built here as
`backend-test-tools generate-data` builds them) is served
with no config.toml, and every model that Python onnxruntime can run must load
and answer its test inputs as onnxruntime does, over V2 JSON, the binary tensor
extension and gRPC (the real tritonclient for all three). Cases onnxruntime
cannot run, or whose inputs or outputs have no V2 datatype, are listed with the
reason, never skipped silently. With CONFORMANCE_REPORT=FILE the counts and the
exclusions are written there as Markdown (`make conformance`)."""

import os
import pathlib
import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import numpy_helper

from onnx.backend.test.case import node as node_cases

# ONNX element types that have a V2 datatype; others (complex, float8, int4, …)
# cannot be sent or answered by any Open Inference Protocol client.
V2 = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.STRING: "BYTES",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BFLOAT16: "BF16",
}
ort.set_default_logger_severity(3)
# ONNX's backend test tolerances.
RTOL, ATOL = 1e-3, 1e-7


class Case:
    def __init__(self, name, path):
        self.name, self.path = name, path
        self.inputs = {}  # name -> (V2 datatype, numpy array)
        self.outputs = {}  # name -> onnxruntime's answer
        self.deterministic = True


def _type_problem(kind, vi):
    t = vi.type
    if not t.HasField("tensor_type"):
        return f"{kind} '{vi.name}' is a {t.WhichOneof('value')}, not a tensor"
    et = t.tensor_type.elem_type
    if et not in V2:
        return (
            f"{kind} '{vi.name}' has element type "
            f"{onnx.TensorProto.DataType.Name(et)}, which has no V2 datatype"
        )
    return None


def _same(a, b):
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and list(a.ravel()) == list(b.ravel())
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _array(x):
    a = numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)
    if a.dtype.name == "bfloat16":
        return a  # ml_dtypes.bfloat16, as tritonclient takes BF16
    if a.dtype == object or a.dtype.kind in "US":
        flat = [v if isinstance(v, bytes) else str(v).encode() for v in a.ravel()]
        a = np.array(flat, dtype=object).reshape(a.shape)
    return a


def _text(a):
    if a.dtype.name == "bfloat16":  # numpy cannot say BF16 to onnxruntime; OrtValue can
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), onnx.TensorProto.BFLOAT16)
    if a.dtype != object:
        return a
    return np.array([x.decode() for x in a.ravel()], dtype=object).reshape(a.shape)


# Operators whose answers are random: only the shape is compared.
RANDOM = {"Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"}


def load_corpus(workdir):
    """Every node test: a Case that onnxruntime runs, or (name, reason); each
    runnable model is written to workdir/<name>/model.onnx."""
    cases, excluded = [], []
    for tc in node_cases.collect_testcases():
        model = tc.model
        inits = {i.name for i in model.graph.initializer}
        graph_inputs = [i for i in model.graph.input if i.name not in inits]
        problems = [_type_problem("input", i) for i in graph_inputs]
        problems += [_type_problem("output", o) for o in model.graph.output]
        problems = [p for p in problems if p]
        if problems:
            excluded.append((tc.name, problems[0]))
            continue
        path = workdir / tc.name
        path.mkdir(parents=True)
        (path / "model.onnx").write_bytes(model.SerializeToString())
        case = Case(tc.name, path)
        case.deterministic = not any(n.op_type in RANDOM for n in model.graph.node)
        data_inputs = tc.data_sets[0][0]
        for vi, x in zip(graph_inputs, data_inputs):
            case.inputs[vi.name] = (V2[vi.type.tensor_type.elem_type], _array(x))
        try:
            sess = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
            # onnxruntime takes text as str objects (bytes would become "b'...'").
            feed = {k: _text(v) for k, (_, v) in case.inputs.items()}
            names = [o.name for o in sess.get_outputs()]
            first = sess.run(None, feed)
            second = sess.run(None, feed)
        except Exception as e:  # onnxruntime's own refusal is the reason listed
            msg = " ".join(str(e).split()) or type(e).__name__
            msg = re.sub(r"Load model from \S+ failed:", "load failed: ", msg)
            # ONNX Runtime's source location and C++ signature say nothing to a reader.
            msg = re.sub(r"/onnxruntime_src/\S+ .*?\) (?=\w)", "", msg)
            excluded.append((tc.name, f"onnxruntime {ort.__version__} cannot run it: {msg[:300]}"))
            continue
        for n, a, b in zip(names, first, second):
            a = _array(a)
            case.outputs[n] = a
            case.deterministic &= _same(a, _array(b))
        cases.append(case)
    return cases, excluded


@pytest.fixture(scope="module")
def corpus(switchyard, tmp_path_factory):
    cases, excluded = load_corpus(tmp_path_factory.mktemp("onnx-node-cases"))
    assert len(cases) > 1000, f"only {len(cases)} runnable node tests"
    repo = tmp_path_factory.mktemp("onnx-node-tests")
    for c in cases:
        (repo / c.name / "1").mkdir(parents=True)
        shutil.copy(c.path / "model.onnx", repo / c.name / "1" / "model.onnx")
    server = switchyard(models=repo, ready_timeout=600)
    yield server, cases, excluded


def _compare(case, got):
    """Problems of one answer (a dict output name -> array) against onnxruntime's."""
    problems = []
    for name, want in case.outputs.items():
        if name not in got:
            problems.append(f"no output '{name}'")
            continue
        have = got[name]
        if want.dtype.name == "bfloat16":
            want = want.astype(np.float32)
        if have is None:
            problems.append(f"output '{name}' missing")
            continue
        if tuple(have.shape) != tuple(want.shape):
            problems.append(f"output '{name}' shape {have.shape}, onnxruntime {want.shape}")
            continue
        if not case.deterministic:
            continue  # random operators: the shape is all that can agree
        if want.dtype == object:
            w = [x if isinstance(x, bytes) else str(x).encode() for x in want.ravel()]
            h = [x if isinstance(x, bytes) else str(x).encode() for x in have.ravel()]
            if w != h:
                problems.append(f"output '{name}' {h[:4]}..., onnxruntime {w[:4]}...")
        elif want.dtype.kind in "fc":
            try:
                np.testing.assert_allclose(have.astype(want.dtype), want, rtol=RTOL, atol=ATOL, equal_nan=True)
            except AssertionError as e:
                problems.append(f"output '{name}' differs: {str(e).strip().splitlines()[-1]}")
        elif not np.array_equal(have.astype(want.dtype), want):
            problems.append(f"output '{name}' {have.ravel()[:4]}..., onnxruntime {want.ravel()[:4]}...")
    return problems


def _json_cannot_carry(case):
    """Why V2 JSON cannot carry this case, or None: JSON has no NaN or infinity,
    and tritonclient sends BF16 as binary data only."""
    for name, (dtype, a) in case.inputs.items():
        if dtype == "BF16":
            return f"input '{name}' is BF16, which tritonclient sends only as binary"
        a = a.astype(np.float32) if a.dtype.name == "bfloat16" else a
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"input '{name}' holds NaN or infinity"
    for name, a in case.outputs.items():
        if a.dtype.name == "bfloat16":
            return f"output '{name}' is BF16, which tritonclient reads only as binary"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"output '{name}' holds NaN or infinity"
    return None


def _infer(client, mod, case, binary):
    inputs = []
    for name, (dtype, arr) in case.inputs.items():
        i = mod.InferInput(name, list(arr.shape), dtype)
        if mod is httpclient:
            i.set_data_from_numpy(arr, binary_data=binary)
        else:
            i.set_data_from_numpy(arr)
        inputs.append(i)
    if mod is httpclient:
        outputs = [mod.InferRequestedOutput(n, binary_data=binary) for n in case.outputs]
    else:
        outputs = [mod.InferRequestedOutput(n) for n in case.outputs]
    r = client.infer(case.name, inputs, outputs=outputs)
    return {n: r.as_numpy(n) for n in case.outputs}


def _run_all(corpus, mod, url, binary):
    server, cases, _ = corpus
    client = mod.InferenceServerClient(url=url)
    failures, skipped = [], []
    for c in cases:
        if mod is httpclient and not binary:
            why = _json_cannot_carry(c)
            if why:
                skipped.append((c.name, why))
                continue
        try:
            problems = _compare(c, _infer(client, mod, c, binary))
        except Exception as e:
            problems = [str(e).strip().splitlines()[0][:300]]
        if problems:
            failures.append(f"{c.name}: {'; '.join(problems)}")
    return failures, skipped


def _report(section, lines):
    path = os.environ.get("CONFORMANCE_REPORT")
    if not path:
        return
    with open(path, "a") as f:
        f.write(f"\n## {section}\n\n")
        f.writelines(f"- {line}\n" for line in lines)


def _answered(corpus, how, n):
    """Records, once they all passed, how many answered as onnxruntime does."""
    _report(f"{how}: {n} of {len(corpus[1])} answered as onnxruntime does", [])


def test_every_runnable_node_test_loads(corpus):
    server, cases, excluded = corpus
    client = httpclient.InferenceServerClient(url=server.http)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    not_ready = [
        f"{c.name}: {index.get(c.name, {}).get('reason', 'not in the index')}"
        for c in cases
        if index.get(c.name, {}).get("state") != "READY"
    ]
    total = len(cases) + len(excluded)
    by_runtime = sum("cannot run it" in r for _, r in excluded)
    path = os.environ.get("CONFORMANCE_REPORT")
    if path:
        with open(path, "w") as f:
            f.write(
                "# ONNX node-test conformance\n\n"
                f"onnx {onnx.__version__} node test cases, onnxruntime {ort.__version__}: "
                f"{len(cases) - len(not_ready)} served of {len(cases)} that onnxruntime runs "
                f"({total} in the corpus; {len(excluded)} excluded below: {by_runtime} that "
                f"onnxruntime cannot load or run, {len(excluded) - by_runtime} whose inputs or "
                "outputs are not tensors of a V2 datatype).\n"
            )
    _report("Excluded (with the reason)", [f"`{n}`: {r}" for n, r in excluded])
    assert not not_ready, f"{len(not_ready)} of {len(cases)} not ready:\n" + "\n".join(not_ready)


def test_v2_json_answers_as_onnxruntime(corpus):
    server = corpus[0]
    failures, skipped = _run_all(corpus, httpclient, server.http, binary=False)
    assert not failures, f"{len(failures)} failed over JSON:\n" + "\n".join(failures)
    _answered(corpus, "V2 JSON", len(corpus[1]) - len(skipped))
    _report("V2 JSON: compared over binary only", [f"`{n}`: {r}" for n, r in skipped])


def test_binary_http_answers_as_onnxruntime(corpus):
    server = corpus[0]
    failures, _ = _run_all(corpus, httpclient, server.http, binary=True)
    assert not failures, f"{len(failures)} failed over binary HTTP:\n" + "\n".join(failures)
    _answered(corpus, "binary HTTP", len(corpus[1]))


def test_grpc_answers_as_onnxruntime(corpus):
    server = corpus[0]
    failures, _ = _run_all(corpus, grpcclient, server.grpc, binary=True)
    assert not failures, f"{len(failures)} failed over gRPC:\n" + "\n".join(failures)
    _answered(corpus, "gRPC", len(corpus[1]))
