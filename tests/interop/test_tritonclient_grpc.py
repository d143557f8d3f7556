"""The real tritonclient.grpc (and its generated stubs) against a real switchyard process."""

import json
import pathlib
import queue
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_BODY = 1 << 20


def start(switchyard, *extra):
    s = switchyard("--max-body-bytes", str(MAX_BODY), *extra)
    return s, grpcclient.InferenceServerClient(url=s.grpc), s.grpc


@pytest.fixture(scope="module")
def server(switchyard):
    _, client, addr = start(switchyard)
    yield client, addr
    client.close()


def expected():
    return json.loads((ROOT / "models" / "expected.json").read_text())


def iris_input(rows=((5.1, 3.5, 1.4, 0.2), (6.7, 3.0, 5.2, 2.3))):
    x = np.array(rows, dtype=np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_health_and_metadata(server):
    client, _ = server
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "switchyard" and "model_configuration" in meta["extensions"]
    assert client.is_model_ready("iris")
    assert client.is_model_ready("mlp", "1")
    m = client.get_model_metadata("iris", as_json=True)
    assert m["platform"] == "onnxruntime_onnx"
    assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert client.get_model_metadata("mlp", as_json=True)["versions"] == ["1", "2"]


def test_model_config_is_tritons_shape(server):
    client, _ = server
    c = client.get_model_config("iris", as_json=True)["config"]
    assert c["name"] == "iris" and c["platform"] == "onnxruntime_onnx"
    assert c["max_batch_size"] == 64
    assert "dynamic_batching" in c, c
    assert c["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert [o["data_type"] for o in c["output"]] == ["TYPE_INT64", "TYPE_FP32"]
    assert c["version_policy"] == {"latest": {"num_versions": 1}}
    assert client.get_model_config("mlp", as_json=True)["config"]["version_policy"] == {"all": {}}
    mixed = client.get_model_config("mixed", as_json=True)["config"]
    assert mixed.get("max_batch_size", 0) == 0
    assert mixed["input"][3]["data_type"] == "TYPE_STRING"


def test_raw_infer_matches_python_onnxruntime(server):
    client, _ = server
    case = expected()["iris"][0]
    x = np.array(case["inputs"]["input"]["data"], dtype=np.float32).reshape(case["inputs"]["input"]["shape"])
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("iris", [inp], request_id="g-1")
    assert r.get_response().id == "g-1"
    assert len(r.get_response().raw_output_contents) == 2, "raw in, raw out"
    np.testing.assert_array_equal(r.as_numpy("label"), np.array(case["outputs"]["label"]["data"], dtype=np.int64))
    want = case["outputs"]["probabilities"]
    np.testing.assert_array_equal(
        r.as_numpy("probabilities"), np.array(want["data"], dtype=np.float32).reshape(want["shape"])
    )


def test_typed_contents_through_the_generated_stub(server):
    _, addr = server
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(addr))
    req = service_pb2.ModelInferRequest(model_name="mixed", model_version="1", id="typed")
    t = req.inputs.add(name="features", datatype="FP32", shape=[2, 3])
    t.contents.fp32_contents.extend([1.5, -2.0, 0.25, 0.0, 3.0, -0.5])
    t = req.inputs.add(name="counts", datatype="INT64", shape=[2, 3])
    t.contents.int64_contents.extend([1, 2, 3, 9007199254740993, -4, 0])
    t = req.inputs.add(name="scale", datatype="FP64", shape=[])
    t.contents.fp64_contents.append(0.5)
    t = req.inputs.add(name="tag", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"alpha", "βeta ✓".encode()])
    resp = stub.ModelInfer(req)
    assert not resp.raw_output_contents, "typed in, typed out"
    out = {o.name: o for o in resp.outputs}
    want = expected()["mixed"][0]["outputs"]
    assert list(out["total"].contents.int64_contents) == want["total"]["data"]
    assert list(out["weighted"].contents.fp64_contents) == want["weighted"]["data"]
    assert list(out["positive"].contents.bool_contents) == want["positive"]["data"]
    assert [b.decode() for b in out["tag_out"].contents.bytes_contents] == want["tag_out"]["data"]


def test_bytes_and_fp16_raw(server):
    client, _ = server
    tags = np.array([b"a", "ü".encode(), b""], dtype=np.object_)
    halves = np.array([1.5, -0.25, 65504], dtype=np.float16)
    inputs = []
    for name, arr, dt in [("x_bytes", tags, "BYTES"), ("x_fp16", halves, "FP16")]:
        i = grpcclient.InferInput(name, [3], dt)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    # Every other identity input, zero-filled.
    for name, dt, npt in [("bool", "BOOL", np.bool_), ("uint8", "UINT8", np.uint8), ("uint16", "UINT16", np.uint16),
                          ("uint32", "UINT32", np.uint32), ("uint64", "UINT64", np.uint64), ("int8", "INT8", np.int8),
                          ("int16", "INT16", np.int16), ("int32", "INT32", np.int32), ("int64", "INT64", np.int64),
                          ("fp32", "FP32", np.float32), ("fp64", "FP64", np.float64)]:
        i = grpcclient.InferInput(f"x_{name}", [3], dt)
        i.set_data_from_numpy(np.zeros(3, dtype=npt))
        inputs.append(i)
    import ml_dtypes

    i = grpcclient.InferInput("x_bf16", [3], "BF16")
    i.set_data_from_numpy(np.array([1, 2, 3], dtype=ml_dtypes.bfloat16))
    inputs.append(i)
    r = client.infer("identity", inputs)
    np.testing.assert_array_equal(r.as_numpy("y_bytes"), tags)
    np.testing.assert_array_equal(r.as_numpy("y_fp16"), halves)


def test_streaming(server):
    client, _ = server
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(10):
            client.async_stream_infer("iris", [iris_input()], request_id=f"s{i}")
        client.async_stream_infer("nope", [iris_input()], request_id="bad")
        got = [results.get(timeout=30) for _ in range(11)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: list(r.as_numpy("label")) for r, e in got if e is None}
    errors = [e for r, e in got if e is not None]
    assert ok == {f"s{i}": [0, 2] for i in range(10)}
    assert len(errors) == 1 and "unknown model 'nope'" in str(errors[0])


def test_async_infer(server):
    client, _ = server
    done = queue.Queue()
    for _ in range(8):
        client.async_infer("iris", [iris_input()], callback=partial(lambda q, result, error: q.put((result, error)), done))
    for _ in range(8):
        r, e = done.get(timeout=30)
        assert e is None and list(r.as_numpy("label")) == [0, 2]


def test_repository_index_and_statistics(server):
    client, _ = server
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "iris", "version": "1", "state": "READY"} in index
    client.infer("mlp", [grpcclient.InferInput("input", [1, 16], "FP32").set_data_from_numpy(np.zeros((1, 16), np.float32))],
                 model_version="1")
    stats = client.get_inference_statistics("mlp", "1", as_json=True)["model_stats"]
    assert len(stats) == 1 and int(stats[0]["inference_count"]) >= 1
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats[0]["batch_stats"]}
    assert sizes.get(1, 0) >= 1, stats[0]["batch_stats"]


def test_load_and_unload_need_the_admin_token_on_grpc(server, switchyard):
    # With no --admin-token, the public port refuses admin calls: a proxy or a
    # port-forward makes every caller local.
    client, _ = server
    with pytest.raises(InferenceServerException) as e:
        client.unload_model("mlp")
    assert "PERMISSION_DENIED" in str(e.value.status())
    assert "--admin" in e.value.message()
    assert client.is_model_ready("mlp")

    _, client, _ = start(switchyard, "--admin-token", "t0ken")
    auth = {"authorization": "Bearer t0ken"}
    try:
        client.unload_model("mlp", headers=auth)
        assert not client.is_model_ready("mlp")
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", [grpcclient.InferInput("input", [1, 16], "FP32").set_data_from_numpy(np.zeros((1, 16), np.float32))])
        assert "UNAVAILABLE" in str(e.value.status())
        client.load_model("mlp", headers=auth)
        assert client.is_model_ready("mlp")
        with pytest.raises(InferenceServerException) as e:
            client.load_model("../iris", headers=auth)
        assert "INVALID_ARGUMENT" in str(e.value.status())
    finally:
        client.close()


def test_admin_token_is_required_when_set(switchyard):
    proc, client, addr = start(switchyard, "--admin-token", "s3cret")
    try:
        with pytest.raises(InferenceServerException) as e:
            client.unload_model("iris")
        assert "UNAUTHENTICATED" in str(e.value.status())
        with pytest.raises(InferenceServerException):
            client.unload_model("iris", headers={"authorization": "Bearer wrong"})
        client.unload_model("iris", headers={"authorization": "Bearer s3cret"})
        assert not client.is_model_ready("iris")
    finally:
        client.close()
        proc.stop()


@pytest.mark.parametrize(
    "build, code, needle",
    [
        (lambda: ("nope", [iris_input()]), "NOT_FOUND", "unknown model"),
        (lambda: ("iris", [grpcclient.InferInput("input", [1, 4], "FP64").set_data_from_numpy(np.zeros((1, 4)))]),
         "INVALID_ARGUMENT", "datatype FP64"),
        (lambda: ("iris", [grpcclient.InferInput("input", [1, 3], "FP32").set_data_from_numpy(np.zeros((1, 3), np.float32))]),
         "INVALID_ARGUMENT", "shape [1, 3]"),
        (lambda: ("mixed", [iris_input()]), "INVALID_ARGUMENT", "unknown input 'input'"),
    ],
)
def test_bad_requests_get_the_right_status(server, build, code, needle):
    client, _ = server
    model, inputs = build()
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, inputs)
    assert code in str(e.value.status()), e.value
    assert needle in e.value.message(), e.value


def test_malformed_protobuf_and_wrong_raw_sizes(server):
    _, addr = server
    ch = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)])
    raw_call = ch.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as e:
        raw_call(b"\xff\xff\xff\xff garbage")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
    req = service_pb2.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "16 bytes" in e.value.details()
    big = service_pb2.ModelInferRequest(model_name="iris")
    big.inputs.add(name="input", datatype="FP32", shape=[MAX_BODY // 16 + 1, 4])
    big.raw_input_contents.append(b"\x00" * (MAX_BODY + 16))
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(big)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    # Still serving.
    assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready


def test_deadline(server):
    _, addr = server
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(addr))
    req = service_pb2.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
    assert stub.ModelInfer(req, timeout=10).outputs


def test_compressed_requests(server):
    _, addr = server
    for algo in [grpc.Compression.Gzip, grpc.Compression.Deflate]:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(addr, compression=algo))
        req = service_pb2.ModelInferRequest(model_name="iris")
        req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        req.raw_input_contents.append(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32).tobytes())
        resp = stub.ModelInfer(req)
        assert np.frombuffer(resp.raw_output_contents[0], dtype=np.int64).tolist() == [0]
