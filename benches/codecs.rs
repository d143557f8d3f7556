//! The edge codecs: V2 JSON and binary request decoding, response encoding, and the
//! gRPC message decoding, at the sizes of the benchmark models.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use switchyard::core::request::InferResponse;
use switchyard::core::tensor::{DataType, Tensor};
use switchyard::edge::v2::{decode_request, encode_response, OutputFormat};

fn json_body(rows: usize, cols: usize) -> Bytes {
    let data: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    Bytes::from(
        serde_json::to_vec(&json!({"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [rows, cols], "data": data}]}))
        .unwrap(),
    )
}

fn binary_body(rows: usize, cols: usize) -> (Bytes, usize) {
    let raw: Vec<u8> = (0..rows * cols)
        .flat_map(|i| (i as f32 * 0.37).sin().to_le_bytes())
        .collect();
    let mut b = serde_json::to_vec(&json!({"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [rows, cols],
         "parameters": {"binary_data_size": raw.len()}}]}))
    .unwrap();
    let n = b.len();
    b.extend_from_slice(&raw);
    (Bytes::from(b), n)
}

fn response(rows: usize, cols: usize) -> InferResponse {
    let data: Vec<u8> = (0..rows * cols)
        .flat_map(|i| (i as f32 / 7.0).to_le_bytes())
        .collect();
    InferResponse {
        id: None,
        model: "m".into(),
        version: 1,
        outputs: vec![Tensor {
            name: "output".into(),
            dtype: DataType::F32,
            shape: vec![rows as i64, cols as i64],
            data: data.into(),
        }],
        parameters: Default::default(),
    }
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("v2_decode");
    for (rows, cols) in [(1, 64), (1, 256), (64, 256)] {
        let body = json_body(rows, cols);
        g.throughput(Throughput::Elements((rows * cols) as u64));
        g.bench_with_input(
            BenchmarkId::new("json", format!("{rows}x{cols}")),
            &body,
            |b, body| b.iter(|| decode_request(body, None, "m", None).unwrap()),
        );
        let (bin, n) = binary_body(rows, cols);
        g.bench_with_input(
            BenchmarkId::new("binary", format!("{rows}x{cols}")),
            &bin,
            |b, body| b.iter(|| decode_request(body, Some(n), "m", None).unwrap()),
        );
    }
    g.finish();
    let mut g = c.benchmark_group("v2_encode");
    for (rows, cols) in [(1, 10), (1, 16), (64, 16)] {
        let resp = response(rows, cols);
        g.throughput(Throughput::Elements((rows * cols) as u64));
        g.bench_with_input(
            BenchmarkId::new("json", format!("{rows}x{cols}")),
            &resp,
            |b, r| b.iter(|| encode_response(r, &OutputFormat::default())),
        );
    }
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
