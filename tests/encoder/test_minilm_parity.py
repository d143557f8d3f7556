"""all-MiniLM-L6-v2 served by switchyard's candle backend gives the embeddings
that the Python sentence-transformers package gives on CPU (cosine >= 0.9999 for
each of 50 varied sentences, one of them longer than the model's 256 tokens),
asked for by the real tritonclient over HTTP and gRPC, one by one and in batches."""

import os
import pathlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "minilm" / "1"
SENTENCES = (ROOT / "tests" / "fixtures" / "sentences.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def reference():
    assert (MODEL / "model.safetensors").is_file(), "run `make minilm` first"
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL), device="cpu")
    return model.encode(SENTENCES, batch_size=16, convert_to_numpy=True)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def ask(client, module, texts):
    arr = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
    inp = module.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(arr)
    return client.infer("minilm", [inp]).as_numpy("embedding")


def test_fifty_sentences_match_sentence_transformers(switchyard, reference):
    assert len(SENTENCES) == 50
    s = switchyard()
    http = httpclient.InferenceServerClient(s.http)
    grpc = grpcclient.InferenceServerClient(s.grpc)
    batched = np.concatenate([ask(http, httpclient, SENTENCES[i : i + 16]) for i in range(0, 50, 16)])
    one_by_one = np.concatenate([ask(grpc, grpcclient, [t]) for t in SENTENCES])
    for got in (batched, one_by_one):
        assert got.shape == (50, 384)
        cos = cosines(got, reference)
        worst = int(cos.argmin())
        assert cos.min() >= 0.9999, f"sentence {worst} {SENTENCES[worst][:60]!r}: cosine {cos[worst]}"
        assert np.abs(got - reference).max() < 1e-4
