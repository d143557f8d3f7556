//! Peak heap of decoding one KServe V1 / MLflow body into tensors, against
//! parsing the same body into a JSON tree (what these decoders did before they
//! read straight into typed tensors, and only their first step). A counting
//! allocator measures it; `cargo bench --bench decode_memory` prints the table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use serde_json::json;
use switchyard::core::tensor::DataType;
use switchyard::serving::{ModelMetadata, TensorSpec};

struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = NOW.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(n, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Relaxed);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Peak heap above what was allocated before `f` ran.
fn peak<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = NOW.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (PEAK.load(Relaxed) - base, out)
}

fn main() {
    let (rows, cols) = (4096, 64);
    let meta = ModelMetadata {
        platform: "onnxruntime_onnx",
        inputs: vec![TensorSpec {
            name: "input".into(),
            dtype: DataType::F32,
            shape: vec![-1, cols],
            symbols: vec![None, None],
        }],
        outputs: vec![],
        max_batch_size: 0,
        optional_outputs: Vec::new(),
    };
    let matrix: Vec<Vec<f32>> = (0..rows)
        .map(|r| {
            (0..cols)
                .map(|c| ((r * cols + c) as f32 * 0.37).sin())
                .collect()
        })
        .collect();
    let columns: Vec<String> = (0..cols).map(|c| format!("f{c}")).collect();
    let records: Vec<serde_json::Value> = matrix
        .iter()
        .map(|row| {
            serde_json::Value::Object(
                columns
                    .iter()
                    .zip(row)
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            )
        })
        .collect();
    let bodies = [
        ("V1 instances", "v1", json!({"instances": matrix})),
        (
            "MLflow dataframe_split",
            "mlflow",
            json!({"dataframe_split": {"columns": columns, "data": matrix}}),
        ),
        (
            "MLflow dataframe_records",
            "mlflow",
            json!({"dataframe_records": records}),
        ),
    ];
    println!(
        "{rows}x{cols} FP32 rows; peak heap while decoding one body (tensor bytes: {} KiB)",
        rows * cols * 4 / 1024
    );
    println!("| body | size | JSON tree | straight into tensors | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for (what, codec, v) in bodies {
        let body = serde_json::to_vec(&v).unwrap();
        let (tree, t) = peak(|| serde_json::from_slice::<serde_json::Value>(&body).unwrap());
        drop(t);
        let (typed, r) = peak(|| match codec {
            "v1" => switchyard::edge::v1::decode_predict(&body, &meta, "m", None).map(|r| r.0),
            _ => {
                switchyard::edge::mlflow::decode(&body, Some("application/json"), &meta, "m", None)
                    .map(|r| r.0)
            }
        });
        let r = r.unwrap();
        assert_eq!(r.inputs[0].shape, vec![rows, cols]);
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "| {what} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1}x |",
            mib(body.len()),
            mib(tree),
            mib(typed),
            tree as f64 / typed as f64
        );
    }
}
