"""KServe's own Python SDK clients (REST V1 and V2, gRPC V2) against switchyard."""

import asyncio
import json
import pathlib

import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(scope="module")
def server(switchyard):
    return switchyard()


def run(coro):
    return asyncio.run(coro)


def test_rest_v2(server):
    async def go():
        c = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            base = f"http://{server.http}"
            assert await c.is_server_ready(base)
            assert await c.is_model_ready(base, "iris")
            req = InferRequest(
                model_name="iris",
                infer_inputs=[InferInput("input", [2, 4], "FP32", np.array(ROWS, dtype=np.float32))],
                request_id="k-1",
            )
            return await c.infer(base, req, model_name="iris")
        finally:
            await c.close()

    resp = run(go())
    out = {o.name: o.as_numpy() for o in resp.outputs}
    assert out["label"].tolist() == [0, 2]
    want = json.loads((ROOT / "models" / "expected.json").read_text())["iris"][0]["outputs"]
    assert resp.id == "k-1"
    assert out["probabilities"].shape == (2, 3)
    assert want["label"]["data"][0] == 0


def test_rest_v1(server):
    async def go():
        c = InferenceRESTClient(RESTConfig(protocol="v1"))
        try:
            base = f"http://{server.http}"
            assert await c.is_model_ready(base, "iris")
            return await c.infer(base, {"instances": ROWS}, model_name="iris")
        finally:
            await c.close()

    resp = run(go())
    assert [p["label"] for p in resp["predictions"]] == [0, 2]


def test_grpc_v2(server):
    async def go():
        c = InferenceGRPCClient(url=server.grpc)
        try:
            req = InferRequest(
                model_name="mlp",
                infer_inputs=[InferInput("input", [1, 16], "FP32", np.full((1, 16), 0.25, dtype=np.float32))],
                model_version="1",
            )
            return await c.infer(req)
        finally:
            await c.close()

    resp = run(go())
    out = resp.outputs[0].as_numpy()
    assert out.shape == (1, 4)
    np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-5)
