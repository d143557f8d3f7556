"""The real tritonclient.http (from PyPI) against a real switchyard process: metadata and JSON infer."""

import json
import pathlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = pathlib.Path(__file__).resolve().parents[2]
ADDR = []


@pytest.fixture(scope="module")
def server(switchyard):
    s = switchyard()
    ADDR[:] = [s.http]
    client = httpclient.InferenceServerClient(url=s.http)
    yield client
    client.close()


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


def iris_input(binary):
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def test_binary_tensors_by_default(server):
    # tritonclient's defaults: binary inputs, and all outputs binary when none are named.
    result = server.infer("iris", [iris_input(True)])
    assert list(result.as_numpy("label")) == [0, 2]
    assert result.as_numpy("probabilities").shape == (2, 3)
    # Named outputs, one binary and one JSON.
    outs = [
        httpclient.InferRequestedOutput("label", binary_data=True),
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = server.infer("iris", [iris_input(True)], outputs=outs)
    assert list(result.as_numpy("label")) == [0, 2]
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), [1, 1], rtol=1e-6)


def test_binary_bytes_and_every_datatype(server):
    values = expected()["identity"][0]["values"]
    np_types = {
        "bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
        "uint64": np.uint64, "int8": np.int8, "int16": np.int16, "int32": np.int32,
        "int64": np.int64, "fp16": np.float16, "fp32": np.float32, "fp64": np.float64,
        "bytes": np.object_,
    }
    v2 = {"bool": "BOOL", "fp16": "FP16", "fp32": "FP32", "fp64": "FP64", "bf16": "BF16", "bytes": "BYTES"}
    inputs, arrays = [], {}
    for name, v in values.items():
        if name == "bf16":
            import ml_dtypes  # tritonclient's own bfloat16 for numpy

            arr = np.array(v["data"], dtype=ml_dtypes.bfloat16)
        else:
            arr = np.array(v["data"], dtype=np_types[name])
        if name == "bytes":
            arr = np.array([s.encode() for s in v["data"]], dtype=np.object_)
        arrays[name] = arr
        inp = httpclient.InferInput(f"x_{name}", [3], v2.get(name, name.upper()))
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    result = server.infer("identity", inputs)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(result.as_numpy(f"y_{name}"), arr)


def test_compressed_requests_and_responses(server):
    for algo in ["gzip", "deflate"]:
        result = server.infer(
            "iris",
            [iris_input(True)],
            request_compression_algorithm=algo,
            response_compression_algorithm=algo,
        )
        assert list(result.as_numpy("label")) == [0, 2]


def test_async_client(server):
    import asyncio

    import tritonclient.http.aio as aioclient

    async def run():
        c = aioclient.InferenceServerClient(url=ADDR[0])
        try:
            assert await c.is_server_ready()
            x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
            inp = aioclient.InferInput("input", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            results = await asyncio.gather(*[c.infer("iris", [inp]) for _ in range(8)])
            return [list(r.as_numpy("label")) for r in results]
        finally:
            await c.close()

    assert asyncio.run(run()) == [[0]] * 8
