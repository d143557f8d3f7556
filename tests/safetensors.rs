//! The candle backend: mlp's weights as safetensors answer like the ONNX model,
//! and broken files or configs are load errors that say why, never a crash.

mod common;

use common::{copy_dir, sample_models, scratch, Server};
use serde_json::{json, Value};

fn rows(n: usize, seed: u32) -> Value {
    let data: Vec<f32> = (0..n * 16)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 16], "data": data}]})
}

#[test]
fn safetensors_mlp_answers_like_the_onnx_model() {
    let s = Server::start(&sample_models(), &[]);
    let (code, meta) = s.get("/v2/models/mlp_safetensors");
    assert_eq!(code, 200, "{meta}");
    assert_eq!(meta["platform"], "safetensors_mlp");
    assert_eq!(meta["max_batch_size"], 64);
    for (n, seed) in [(1, 1), (3, 2), (17, 3)] {
        let body = rows(n, seed);
        let (c1, onnx) = s.post("/v2/models/mlp/versions/1/infer", &body);
        let (c2, st) = s.post("/v2/models/mlp_safetensors/infer", &body);
        assert_eq!((c1, c2), (200, 200), "{onnx} {st}");
        let a = onnx["outputs"][0]["data"].as_array().unwrap();
        let b = st["outputs"][0]["data"].as_array().unwrap();
        assert_eq!(a.len(), b.len());
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
            .fold(0.0, f64::max);
        assert!(diff <= 1e-5, "max abs diff {diff}");
        assert_eq!(st["outputs"][0]["shape"], json!([n, 4]));
    }
}

/// The sample file split into its header JSON and data.
fn parts() -> (serde_json::Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(sample_models().join("mlp_safetensors/1/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

fn file(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

#[test]
fn broken_files_and_configs_are_load_errors_with_a_reason() {
    let repo = scratch("safetensors-bad");
    let good = sample_models().join("mlp_safetensors");
    let config = std::fs::read_to_string(good.join("config.toml")).unwrap();
    let bytes = std::fs::read(good.join("1/model.safetensors")).unwrap();
    let (header, data) = parts();
    let variant = |name: &str, model: Vec<u8>, config: &str| {
        copy_dir(&good.join("1"), &repo.join(name).join("1"));
        std::fs::write(repo.join(name).join("1/model.safetensors"), model).unwrap();
        std::fs::write(repo.join(name).join("config.toml"), config).unwrap();
    };
    variant("truncated", bytes[..bytes.len() - 100].to_vec(), &config);
    let mut lying = header.clone();
    lying["fc2.bias"]["data_offsets"] = json!([data.len() - 16, data.len() + 4096]);
    variant("lying", file(&lying, &data), &config);
    let mut f16 = header.clone();
    let off = f16["fc2.bias"]["data_offsets"].clone();
    let start = off[0].as_u64().unwrap();
    f16["fc2.bias"] = json!({"dtype": "F16", "shape": [8], "data_offsets": [start, start + 16]});
    variant("dtype", file(&f16, &data), &config);
    variant(
        "missing",
        bytes.clone(),
        &config.replace("fc2.weight", "fc3.weight"),
    );
    variant(
        "shape",
        bytes.clone(),
        &config
            .replace("in_features = 32", "in_features = 31")
            .replace("out_features = 32", "out_features = 31"),
    );
    variant("noarch", bytes.clone(), "backend = \"safetensors\"\n");
    let s = Server::start(&repo, &[]);
    for (model, needle) in [
        ("truncated", "model.safetensors"),
        ("lying", "model.safetensors"),
        ("dtype", "fc2.bias"),
        ("missing", "'fc3.weight'"),
        ("shape", "has shape"),
        ("noarch", "architecture"),
    ] {
        let (code, e) = s.get(&format!("/v2/models/{model}/ready"));
        assert_eq!(code, 503, "{model}: {e}");
        let reason = e["error"].as_str().unwrap();
        assert!(reason.contains(needle), "{model}: {reason}");
    }
    assert!(s.get("/v2/health/live").0 == 200, "the server is still up");
}
