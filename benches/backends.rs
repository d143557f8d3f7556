//! The same MLP in process, through the backend trait: ONNX Runtime
//! (`models/mlp/1/model.onnx`) against candle (`models/mlp_safetensors`, the same
//! weights), at 1 and 64 rows; and the MiniLM text encoder (`make minilm`) on one
//! sentence and on 32 of `tests/fixtures/sentences.txt`, the limit the server's
//! sentences/s compare with. Needs libonnxruntime.so: `make ort`, then
//! `ORT_DYLIB_PATH=$PWD/.cache/onnxruntime-1.31.1/libonnxruntime.so cargo bench --bench backends`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard::core::config::ModelConfig;
use switchyard::core::tensor::{DataType, Tensor};
use switchyard::runtime;

fn input(rows: usize) -> Vec<Tensor> {
    let data: Vec<u8> = (0..rows * 16)
        .flat_map(|i| ((i % 97) as f32 / 97.0 - 0.5).to_le_bytes())
        .collect();
    vec![Tensor::new(
        "input".into(),
        DataType::F32,
        vec![rows as i64, 16],
        data.into(),
    )
    .unwrap()]
}

fn backends(c: &mut Criterion) {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let onnx_cfg = ModelConfig::default();
    let st_cfg = ModelConfig::load(&models.join("mlp_safetensors")).expect("config");
    let mut onnx = runtime::load(&models.join("mlp/1"), &onnx_cfg)
        .expect("ONNX Runtime (set ORT_DYLIB_PATH)")
        .instances
        .remove(0);
    let mut candle = runtime::load(&models.join("mlp_safetensors/1"), &st_cfg)
        .expect("safetensors")
        .instances
        .remove(0);
    let outputs = vec!["output".to_string()];
    let mut g = c.benchmark_group("mlp 16-32-4");
    for rows in [1usize, 64] {
        let x = input(rows);
        g.bench_with_input(BenchmarkId::new("onnxruntime", rows), &x, |b, x| {
            b.iter(|| black_box(onnx.infer(x, &outputs).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("candle", rows), &x, |b, x| {
            b.iter(|| black_box(candle.infer(x, &outputs).unwrap()))
        });
    }
    g.finish();
}

fn texts(t: &[&str]) -> Vec<Tensor> {
    let data = switchyard::core::tensor::encode_bytes_elements(t.iter().map(|s| s.as_bytes()));
    vec![Tensor::new("text".into(), DataType::Bytes, vec![t.len() as i64], data).unwrap()]
}

fn encoder(c: &mut Criterion) {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let cfg = ModelConfig::load(&models.join("minilm")).expect("config");
    let mut minilm = runtime::load(&models.join("minilm/1"), &cfg)
        .expect("models/minilm/1 (make minilm)")
        .instances
        .remove(0);
    let all = std::fs::read_to_string(models.join("../tests/fixtures/sentences.txt")).unwrap();
    let all: Vec<&str> = all.lines().collect();
    let outputs = vec!["embedding".to_string()];
    let mut g = c.benchmark_group("minilm");
    g.sample_size(20);
    for (name, batch) in [
        ("1 sentence", texts(&all[..1])),
        ("32 sentences", texts(&all[..32])),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(minilm.infer(&batch, &outputs).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, backends, encoder);
criterion_main!(benches);
