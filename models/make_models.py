"""Regenerate the sample model repository and the expected outputs the Rust tests compare against.

Deterministic: fixed seeds, fixed opsets, no timestamps. Run with `make models`
(it creates the virtualenv with the pinned packages of models/requirements.txt).

Models written (Triton-style repository, one folder per model, one per version):
  iris/1      scikit-learn RandomForest on the iris data set, converted with skl2onnx,
              ZipMap off: `label` INT64 [-1] and `probabilities` FP32 [-1, 3]
  mlp/1, /2   two-layer MLP, dynamic batch: `input` FP32 [-1, 16] -> `output` FP32 [-1, 4]
              (softmax); version 2 has other weights, so tests can tell them apart
  mixed/1     several inputs and outputs of mixed types and a scalar input, so it has no
              batch dimension by default (max_batch_size 0)
  identity/1  one Identity per V2 datatype, dynamic 1-D shapes: every dtype round-trips
expected.json: for each model, a few requests (V2 JSON shape) and the outputs of
Python onnxruntime for them.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 8


def save(model, name, version):
    model.ir_version = IR_VERSION
    # Producer fields would otherwise carry library versions into the bytes.
    model.producer_name = "switchyard-make-models"
    model.producer_version = "1"
    onnx.checker.check_model(model)
    d = os.path.join(HERE, name, str(version))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    return path


def iris():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from skl2onnx import to_onnx

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    clf = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    model = to_onnx(
        clf,
        x[:1],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
        final_types=None,
    )
    model.graph.name = "iris_random_forest"
    # skl2onnx names the outputs output_label / output_probability; rename to what users expect.
    renames = {"X": "input", "output_label": "label", "output_probability": "probabilities"}
    for node in model.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.name = renames.get(vi.name, vi.name)
    path = save(model, "iris", 1)
    # The training data, for `switchyard profile` (drift baseline) and the drift tests.
    with open(os.path.join(HERE, "iris", "reference.csv"), "w") as f:
        f.write("sepal_length,sepal_width,petal_length,petal_width\n")
        for row in x:
            f.write(",".join(f"{v:g}" for v in row.tolist()) + "\n")
    rows = [x[0].tolist(), x[60].tolist(), x[120].tolist(), [6.1, 2.8, 4.7, 1.2]]
    return path, [{"input": np.array(rows, dtype=np.float32)}]


def mlp(version):
    rng = np.random.default_rng(1000 + version)
    w1 = rng.normal(0, 0.5, (16, 32)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (32,)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (32, 4)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (4,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
    )
    path = save(helper.make_model(graph, opset_imports=OPSET), "mlp", version)
    if version == 1:
        # The same weights as safetensors, in PyTorch's Linear layout ([out, in]).
        d = os.path.join(HERE, "mlp_safetensors", "1")
        os.makedirs(d, exist_ok=True)
        save_safetensors(os.path.join(d, "model.safetensors"), [
            ("fc1.weight", w1.T), ("fc1.bias", b1), ("fc2.weight", w2.T), ("fc2.bias", b2)])
    r = np.random.default_rng(7)
    return path, [
        {"input": r.normal(0, 1, (1, 16)).astype(np.float32)},
        {"input": r.normal(0, 1, (3, 16)).astype(np.float32)},
    ]


def save_safetensors(path, tensors):
    """The safetensors format by hand (8-byte header length, JSON header, data), so
    that the generator needs no torch."""
    import json
    header, blobs, offset = {}, [], 0
    for name, arr in tensors:
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def mixed():
    nodes = [
        helper.make_node("Cast", ["features"], ["f64"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["counts"], ["c64"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["f64", "c64"], ["fc"]),
        helper.make_node("Mul", ["fc", "scale"], ["weighted"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float32), "zero")),
        helper.make_node("Greater", ["features", "zero"], ["positive"]),
        helper.make_node("Constant", [], ["axis1"], value=numpy_helper.from_array(np.array([1], np.int64), "axis1")),
        helper.make_node("ReduceSum", ["counts", "axis1"], ["total"], keepdims=0),
        helper.make_node("Identity", ["tag"], ["tag_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("counts", TensorProto.INT64, ["n", 3]),
            helper.make_tensor_value_info("scale", TensorProto.DOUBLE, []),
            helper.make_tensor_value_info("tag", TensorProto.STRING, ["n"]),
        ],
        [
            helper.make_tensor_value_info("weighted", TensorProto.DOUBLE, ["n", 3]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["n", 3]),
            helper.make_tensor_value_info("total", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("tag_out", TensorProto.STRING, ["n"]),
        ],
    )
    path = save(helper.make_model(graph, opset_imports=OPSET), "mixed", 1)
    return path, [
        {
            "features": np.array([[1.5, -2.0, 0.25], [0.0, 3.0, -0.5]], np.float32),
            "counts": np.array([[1, 2, 3], [9007199254740993, -4, 0]], np.int64),
            "scale": np.array(0.5, np.float64),
            "tag": np.array(["alpha", "βeta ✓"], dtype=object),
        }
    ]


IDENTITY_TYPES = [
    ("bool", TensorProto.BOOL, np.bool_, [True, False, True]),
    ("uint8", TensorProto.UINT8, np.uint8, [0, 7, 255]),
    ("uint16", TensorProto.UINT16, np.uint16, [0, 7, 65535]),
    ("uint32", TensorProto.UINT32, np.uint32, [0, 7, 4294967295]),
    ("uint64", TensorProto.UINT64, np.uint64, [0, 7, 18446744073709551615]),
    ("int8", TensorProto.INT8, np.int8, [-128, 0, 127]),
    ("int16", TensorProto.INT16, np.int16, [-32768, 0, 32767]),
    ("int32", TensorProto.INT32, np.int32, [-2147483648, 0, 2147483647]),
    ("int64", TensorProto.INT64, np.int64, [-9223372036854775808, 0, 9223372036854775807]),
    ("fp16", TensorProto.FLOAT16, np.float16, [-1.5, 0.0, 65504.0]),
    ("fp32", TensorProto.FLOAT, np.float32, [-1.5, 0.1, 3.4028234663852886e38]),
    ("fp64", TensorProto.DOUBLE, np.float64, [-1.5, 0.1, 1.7976931348623157e308]),
    ("bf16", TensorProto.BFLOAT16, None, [-1.5, 0.0, 3.0]),
    ("bytes", TensorProto.STRING, object, ["", "hello", "ünïcode"]),
]


def identity():
    nodes, inputs, outputs = [], [], []
    for name, ty, _, _ in IDENTITY_TYPES:
        nodes.append(helper.make_node("Identity", [f"x_{name}"], [f"y_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"x_{name}", ty, ["n"]))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", ty, ["n"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    path = save(helper.make_model(graph, opset_imports=OPSET), "identity", 1)
    # numpy has no bfloat16: the expected values are written by hand and not run through
    # Python onnxruntime (the Rust tests check the round trip for bf16).
    return path, None


def encode(arr):
    dt = {
        np.dtype(np.float32): "FP32",
        np.dtype(np.float64): "FP64",
        np.dtype(np.float16): "FP16",
        np.dtype(np.int64): "INT64",
        np.dtype(np.int32): "INT32",
        np.dtype(np.bool_): "BOOL",
        np.dtype(object): "BYTES",
    }[arr.dtype]
    data = arr.reshape(-1).tolist()
    if dt == "BYTES":
        data = [v.decode() if isinstance(v, bytes) else v for v in data]
    return {"datatype": dt, "shape": list(arr.shape), "data": data}


def main():
    expected = {}
    for name, (path, cases) in {
        "iris": iris(),
        "mlp/1": mlp(1),
        "mlp/2": mlp(2),
        "mixed": mixed(),
        "identity": identity(),
    }.items():
        if cases is None:
            continue
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        out_names = [o.name for o in sess.get_outputs()]
        entries = []
        for feeds in cases:
            outs = sess.run(out_names, feeds)
            entries.append(
                {
                    "inputs": {k: encode(v) for k, v in feeds.items()},
                    "outputs": {k: encode(np.asarray(v)) for k, v in zip(out_names, outs)},
                }
            )
        expected[name] = entries
    expected["identity"] = [
        {"values": {name: {"shape": [len(v)], "data": v} for name, _, _, v in IDENTITY_TYPES}}
    ]
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote models and expected.json under", HERE, file=sys.stderr)


if __name__ == "__main__":
    main()
