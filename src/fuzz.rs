//! Entry points of the fuzz targets (`fuzz/`, run by `cargo fuzz`) and of the
//! test that replays their corpora (`tests/fuzz_corpus.rs`): each feeds
//! arbitrary bytes to one decoder that a client or a model file reaches. A
//! target panics only where the code broke its contract: a panic of its own, a
//! client's mistake answered as anything but a 4xx, or a decoded request whose
//! batching arithmetic does not give it back unchanged.

use bytes::Bytes;

use crate::core::batch;
use crate::core::error::Error;
use crate::core::request::{InferRequest, InferResponse};
use crate::core::tensor::DataType;
use crate::edge::ErrorStatus;
use crate::serving::{ModelMetadata, TensorSpec};

/// A fuzz target: takes any bytes.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("v2_json", v2_json),
    ("v2_binary", v2_binary),
    ("v2_structured", v2_structured),
    ("grpc_infer", grpc_infer),
    ("v1_predict", v1_predict),
    ("mlflow_json", mlflow_json),
    ("mlflow_csv", mlflow_csv),
    ("compressed_body", compressed_body),
    ("config_toml", config_toml),
    ("safetensors", safetensors),
    ("warmup_file", warmup_file),
    ("mlmodel_yaml", mlmodel_yaml),
];

/// The model signatures requests are decoded and validated against: a batched
/// one-input model, a batched two-input model with texts, an unbatched one of
/// many datatypes with fixed and dynamic dims, and one of no inputs.
pub fn signatures() -> Vec<ModelMetadata> {
    let spec = |name: &str, dtype, shape: &[i64], sym: &[Option<&str>]| TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        symbols: sym.iter().map(|s| s.map(String::from)).collect(),
    };
    vec![
        ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: vec![spec("input", DataType::F32, &[-1, 4], &[None, None])],
            outputs: vec![spec("output", DataType::F32, &[-1, 3], &[None, None])],
            max_batch_size: 64,
            optional_outputs: Vec::new(),
        },
        ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: vec![
                spec("ids", DataType::I64, &[-1, -1], &[Some("n"), Some("seq")]),
                spec("text", DataType::Bytes, &[-1], &[Some("n")]),
            ],
            outputs: vec![spec("y", DataType::F16, &[-1], &[Some("n")])],
            max_batch_size: 8,
            optional_outputs: Vec::new(),
        },
        ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: vec![
                spec("x", DataType::BF16, &[2, -1, 3], &[None, Some("k"), None]),
                spec("k", DataType::U8, &[], &[]),
                spec("b", DataType::Bool, &[-1], &[Some("k")]),
            ],
            outputs: vec![spec("z", DataType::U64, &[-1, -1], &[None, None])],
            max_batch_size: 0,
            optional_outputs: Vec::new(),
        },
        // A model of no inputs (a Constant): nothing a body gives can feed it.
        ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: vec![],
            outputs: vec![spec("c", DataType::F32, &[5], &[None])],
            max_batch_size: 0,
            optional_outputs: Vec::new(),
        },
    ]
}

/// A client's mistake must be a 4xx.
fn client_error(what: &str, e: &Error) {
    assert!(
        e.http_status().is_client_error(),
        "{what}: a client's bytes gave a {} error: {e}",
        e.http_status()
    );
}

/// What the server does next with a decoded request: validate it against each
/// signature, and for those it fits, join it with itself as a batch and split
/// the batch back, which must give the request's own tensors.
fn serve(req: &InferRequest) {
    for meta in signatures() {
        let mut r = req.clone();
        meta.apply_reshapes(&mut r);
        match meta.validate(&r) {
            Err(e) => client_error("validate", &e),
            Ok(()) if meta.max_batch_size > 0 && !r.inputs.is_empty() => {
                let rows = batch::rows_of(&r.inputs);
                let joined = batch::concat(&[&r.inputs, &r.inputs]);
                let back = batch::split(joined, &[rows, rows]).expect("a batch of valid inputs");
                assert_eq!(back[0], r.inputs, "split gave back other tensors");
                assert_eq!(back[1], r.inputs, "split gave back other tensors");
            }
            Ok(()) => {}
        }
    }
}

/// An answer whose outputs are the request's inputs: any tensor a decoder
/// accepts is one a model with shape inputs can answer.
fn echo(req: &InferRequest) -> InferResponse {
    InferResponse {
        id: req.id.clone(),
        model: "m".into(),
        version: 1,
        outputs: req.inputs.clone(),
        parameters: Default::default(),
    }
}

/// Encodes the request's inputs as an answer, as every codec would; what an
/// encoder refuses must be a 4xx.
fn answer(req: &InferRequest) {
    let resp = echo(req);
    let _ = crate::edge::grpc::codec::encode_response(resp.clone(), true);
    for r in [
        crate::edge::v1::encode_predict(&resp, crate::edge::v1::Layout::Columns),
        crate::edge::v1::encode_predict(&resp, crate::edge::v1::Layout::Rows),
        crate::edge::mlflow::encode(&resp, crate::edge::mlflow::Shape::Tensors),
        crate::edge::mlflow::encode(&resp, crate::edge::mlflow::Shape::Frame),
    ] {
        if let Err(e) = r {
            client_error("answer", &e);
        }
    }
}

/// A V2 JSON infer request body.
pub fn v2_json(data: &[u8]) {
    v2(Bytes::copy_from_slice(data), None);
}

/// A V2 request with the binary tensor extension: the first two bytes give the
/// JSON header's length (`Inference-Header-Content-Length`).
pub fn v2_binary(data: &[u8]) {
    let Some((len, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    v2(
        Bytes::copy_from_slice(body),
        Some(u16::from_le_bytes(*len) as usize),
    );
}

fn v2(body: Bytes, header: Option<usize>) {
    match crate::edge::v2::decode_request(&body, header, "m", None) {
        Ok((req, format)) => {
            serve(&req);
            let _ = crate::edge::v2::encode_response(&echo(&req), &format);
        }
        Err(e) => client_error("V2 request", &e),
    }
}

/// A gRPC `ModelInferRequest` message (protobuf bytes).
pub fn grpc_infer(data: &[u8]) {
    use prost::Message;
    let Ok(msg) = crate::edge::grpc::proto::ModelInferRequest::decode(data) else {
        return;
    };
    match crate::edge::grpc::codec::decode_request(msg) {
        Ok((req, _)) => {
            serve(&req);
            answer(&req);
        }
        Err(e) => client_error("gRPC request", &e),
    }
}

/// A KServe V1 `:predict` body, against each signature.
pub fn v1_predict(data: &[u8]) {
    for meta in signatures() {
        match crate::edge::v1::decode_predict(data, &meta, "m", None) {
            Ok((req, _)) => {
                serve(&req);
                answer(&req);
            }
            Err(e) => client_error("V1 request", &e),
        }
    }
}

fn mlflow(data: &[u8], content_type: &str) {
    for meta in signatures() {
        match crate::edge::mlflow::decode(data, Some(content_type), &meta, "m", None) {
            Ok((req, _)) => {
                serve(&req);
                answer(&req);
            }
            Err(e) => client_error("MLflow request", &e),
        }
    }
}

/// An MLflow `/invocations` JSON body (split, records, instances, inputs).
pub fn mlflow_json(data: &[u8]) {
    mlflow(data, "application/json");
}

/// An MLflow `/invocations` CSV body.
pub fn mlflow_csv(data: &[u8]) {
    mlflow(data, "text/csv");
}

/// A gzip (first byte even) or deflate body, inflated within a 1 MiB limit.
pub fn compressed_body(data: &[u8]) {
    use crate::edge::compression::{decompress, Encoding};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let encoding = if which % 2 == 0 {
        Encoding::Gzip
    } else {
        Encoding::Deflate
    };
    const LIMIT: usize = 1 << 20;
    match decompress(Bytes::copy_from_slice(body), Some(encoding), LIMIT) {
        Ok(out) => assert!(out.len() <= LIMIT, "inflated past the limit"),
        Err(e) => client_error("compressed body", &e),
    }
}

/// A model's `config.toml`: parsed, checked, and every derived setting read.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = crate::core::config::ModelConfig::parse(text) {
        let _ = c.device();
        let _ = c.version_policy();
        let _ = c.priorities();
        let _ = c.max_queue_delay();
        let _ = c.idle_spin();
        let _ = c.max_queue_size();
        let _ = c.instances();
        let _ = c.intra_op_threads();
    }
}

/// A `.safetensors` file as candle reads a version's weights.
pub fn safetensors(data: &[u8]) {
    let _ = candle_core::safetensors::load_buffer(data, &candle_core::Device::Cpu);
}

/// A `warmup/*.json` file of a version.
pub fn warmup_file(data: &[u8]) {
    match crate::edge::v2::decode_warmup_file(data, "m", 1) {
        Ok(req) => serve(&req),
        Err(e) => client_error("warm-up file", &e),
    }
}

/// An MLflow model version's `MLmodel` (YAML), as the registry source reads it.
pub fn mlmodel_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = crate::control::repository::mlflow::onnx_data_of(text) {
        assert!(
            std::path::Path::new(&file).file_name() == Some(std::ffi::OsStr::new(&file)),
            "the onnx flavour's data '{file}' left the version's folder"
        );
    }
}

/// A V2 request built from the bytes as a series of choices (structure-aware):
/// one of the [`signatures`], each input given or left out, its datatype and
/// dims as declared or not, dynamic dims of any small size, values of the
/// datatype's whole range, as JSON or binary data. Most requests it makes are
/// valid, so validation, batching arithmetic and both encoders are reached far
/// more often than from bytes alone.
pub fn v2_structured(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    if let Ok((body, header)) = structured_request(&mut u) {
        v2(Bytes::from(body), header);
    }
}

fn structured_request(
    u: &mut arbitrary::Unstructured<'_>,
) -> arbitrary::Result<(Vec<u8>, Option<usize>)> {
    use serde_json::{json, Value};
    let sigs = signatures();
    let meta = u.choose(&sigs)?;
    let mut inputs = Vec::new();
    let mut binary = Vec::new();
    let rows = u.int_in_range(0..=4i64)?;
    for spec in &meta.inputs {
        // Now and then a request that must fail validation, naming why.
        if u.ratio(1, 16)? {
            continue;
        }
        let dtype = if u.ratio(1, 16)? {
            *u.choose(&DataType::ALL)?
        } else {
            spec.dtype
        };
        let mut shape: Vec<i64> = Vec::new();
        for (axis, &d) in spec.shape.iter().enumerate() {
            shape.push(match d {
                _ if axis == 0 && meta.max_batch_size > 0 => rows,
                -1 => u.int_in_range(0..=3)?,
                d => d,
            });
        }
        if u.ratio(1, 16)? {
            shape.push(u.int_in_range(0..=2)?);
        }
        let n = crate::core::tensor::element_count(&shape).unwrap_or(0);
        let mut values = Vec::with_capacity(n);
        let mut raw = Vec::new();
        for _ in 0..n {
            let (v, bytes) = structured_value(u, dtype)?;
            values.push(v);
            raw.extend_from_slice(&bytes);
        }
        let mut input = json!({"name": spec.name, "datatype": dtype.as_str(), "shape": shape});
        if dtype != DataType::BF16 && !u.arbitrary::<bool>()? {
            input["data"] = Value::Array(values);
        } else {
            input["parameters"] = json!({"binary_data_size": raw.len()});
            binary.extend_from_slice(&raw);
        }
        inputs.push(input);
    }
    let mut req = json!({"inputs": inputs});
    if u.arbitrary::<bool>()? {
        let names: Vec<Value> = meta
            .outputs
            .iter()
            .map(|o| json!({"name": o.name}))
            .collect();
        req["outputs"] = Value::Array(names);
    }
    let mut body = serde_json::to_vec(&req).expect("plain data");
    let header = (!binary.is_empty()).then_some(body.len());
    body.extend_from_slice(&binary);
    Ok((body, header))
}

/// One element of `dtype`: as JSON, and as its little-endian bytes.
fn structured_value(
    u: &mut arbitrary::Unstructured<'_>,
    dtype: DataType,
) -> arbitrary::Result<(serde_json::Value, Vec<u8>)> {
    use serde_json::json;
    macro_rules! int {
        ($t:ty) => {{
            let x: $t = u.arbitrary()?;
            (json!(x), x.to_le_bytes().to_vec())
        }};
    }
    Ok(match dtype {
        DataType::Bool => {
            let b: bool = u.arbitrary()?;
            (json!(b), vec![b as u8])
        }
        DataType::U8 => int!(u8),
        DataType::U16 => int!(u16),
        DataType::U32 => int!(u32),
        DataType::U64 => int!(u64),
        DataType::I8 => int!(i8),
        DataType::I16 => int!(i16),
        DataType::I32 => int!(i32),
        DataType::I64 => int!(i64),
        DataType::F16 | DataType::BF16 | DataType::F32 => {
            let x: f32 = u.arbitrary()?;
            let x = if x.is_finite() { x } else { 0.0 };
            let bytes = match dtype {
                DataType::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                DataType::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
                _ => x.to_le_bytes().to_vec(),
            };
            (json!(x), bytes)
        }
        DataType::F64 => {
            let x: f64 = u.arbitrary()?;
            let x = if x.is_finite() { x } else { 0.0 };
            (json!(x), x.to_le_bytes().to_vec())
        }
        DataType::Bytes => {
            let s: String = u.arbitrary()?;
            let mut b = (s.len() as u32).to_le_bytes().to_vec();
            b.extend_from_slice(s.as_bytes());
            (json!(s), b)
        }
    })
}
