"""The embedding APIs text-encoder users call, served by switchyard for
all-MiniLM-L6-v2: OpenAI's `POST /v1/embeddings` through the real `openai`
client (its base_url pointed at switchyard), and TEI's `POST /embed`, each
giving sentence-transformers' embeddings."""

import json
import os
import pathlib
import urllib.error
import urllib.request

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "minilm" / "1"
SENTENCES = (ROOT / "tests" / "fixtures" / "sentences.txt").read_text(encoding="utf-8").splitlines()[:20]


@pytest.fixture(scope="module")
def reference():
    assert (MODEL / "model.safetensors").is_file(), "run `make minilm` first"
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL), device="cpu").encode(SENTENCES, convert_to_numpy=True)


@pytest.fixture(scope="module")
def server(switchyard):
    return switchyard()


def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0)


def close(got, want):
    got = np.asarray(got, dtype=np.float32)
    assert got.shape == want.shape
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999
    assert np.abs(got - want).max() < 1e-4


def test_openai_client_floats_and_base64(server, reference):
    client = openai_client(server)
    r = client.embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    assert r.object == "list" and r.model == "minilm"
    assert [d.index for d in r.data] == list(range(len(SENTENCES)))
    close([d.embedding for d in r.data], reference)
    assert r.usage.prompt_tokens == r.usage.total_tokens
    assert r.usage.prompt_tokens > 2 * len(SENTENCES), "[CLS] and [SEP] at least"
    # The client's default: base64 on the wire, decoded by the client.
    b = client.embeddings.create(model="minilm", input=SENTENCES[0])
    close([b.data[0].embedding], reference[:1])


def test_openai_errors_name_the_problem(server):
    import openai

    client = openai_client(server)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError, match="not a text encoder"):
        client.embeddings.create(model="mlp", input="x")
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="minilm", input="x", dimensions=64)
    with pytest.raises(openai.BadRequestError, match="token ids"):
        client.embeddings.create(model="minilm", input=[[1, 2, 3]])


def post(server, path, body):
    req = urllib.request.Request(
        f"http://{server.http}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_tei_embed(server, reference):
    code, vectors = post(server, "/embed", {"inputs": SENTENCES})
    assert code == 200
    close(vectors, reference)
    code, one = post(server, "/embed", {"inputs": SENTENCES[1]})
    assert code == 200
    close(one, reference[1:2])
    code, err = post(server, "/embed", {"inputs": "x", "normalize": False})
    assert code == 400 and "config.toml" in err["error"]
