//! Warm-up of a freshly loaded version before it is published: requests run
//! through its real workers so that the first client's request is not the slow
//! one. Requests the user wrote (`warmup/*.json`) are a contract and can fail the
//! load; the one generated from the metadata is best effort and never can, since
//! a gateway must not be stricter than the runtime it wraps (an all-zeros `k` of
//! TopK, an empty NonZero, …: models whose outputs follow their input values).

use std::path::Path;

use bytes::Bytes;

use crate::core::error::{Error, Result};
use crate::core::request::InferRequest;
use crate::core::tensor::{DataType, Tensor};
use crate::serving::{ModelMetadata, ModelVersion, TensorSpec};

/// What the warm-up of one version did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This many requests ran and answered as declared.
    Ran(usize),
    /// The generated request was not sent, or its answer was not as declared;
    /// the version serves anyway. The reason is logged.
    BestEffort(String),
}

/// Decodes a warm-up file's bytes into a request to `(model, version)`. The
/// files are V2 request bodies, a wire format, so the edge's codec decodes them;
/// the wiring hands it down here.
pub type Decoder = fn(&[u8], &str, u64) -> Result<InferRequest>;

/// Runs the warm-up requests of `mv`, whose files are in `dir`.
pub fn warm_up(mv: &ModelVersion, dir: &Path, decode: Decoder) -> Result<Outcome> {
    let outcome = match from_folder(mv, &dir.join("warmup"), decode)? {
        Some(requests) => {
            for (what, req) in &requests {
                let outputs = mv
                    .infer_blocking(req.clone())
                    .map_err(|e| Error::load(format!("{what}: {e}")))?;
                match check_outputs(&mv.metadata, &outputs) {
                    Ok(()) => {}
                    Err(Mismatch::Fatal(e)) => return Err(Error::load(format!("{what}: {e}"))),
                    // ONNX shape inference is advisory: the runtime's shapes win.
                    Err(Mismatch::Dims(e)) => tracing::warn!(
                        model = %mv.model, version = mv.version, "{what}: {e}"
                    ),
                }
            }
            Outcome::Ran(requests.len())
        }
        None => generated_run(mv),
    };
    if let Outcome::BestEffort(reason) = &outcome {
        tracing::info!(
            model = %mv.model, version = mv.version,
            "generated warm-up: {reason}; the version serves anyway (give warmup/*.json to check it at load)"
        );
    }
    // last_compute_ns stays: it is what the first lone request can expect.
    mv.stats.reset();
    Ok(outcome)
}

/// Runs the generated request, if one is likely to run; never an error.
fn generated_run(mv: &ModelVersion) -> Outcome {
    let batched = mv.metadata.max_batch_size > 0;
    if let Some(s) = mv
        .metadata
        .inputs
        .iter()
        .find(|s| looks_like_shape(s, batched))
    {
        return Outcome::BestEffort(format!(
            "not sent: input '{}' ({} {:?}) looks like a shape, count, axis or index, \
             whose values no generated request can guess",
            s.name, s.dtype, s.shape
        ));
    }
    let req = match generated(&mv.model, &mv.metadata) {
        Ok(r) => r,
        Err(e) => return Outcome::BestEffort(format!("not sent: {e}")),
    };
    match mv.infer_blocking(req) {
        Err(e) => Outcome::BestEffort(format!("the runtime refused it: {e}")),
        Ok(outputs) => match check_outputs(&mv.metadata, &outputs) {
            Ok(()) => Outcome::Ran(1),
            Err(Mismatch::Fatal(e) | Mismatch::Dims(e)) => Outcome::BestEffort(e),
        },
    }
}

/// An integer input of rank 0 or 1 usually steers the graph (TopK's `k`, Range's
/// limits, Reshape's shape, axes, gather indices): a made-up value fails the run.
/// Not so a batched model's `[batch]` input: one value a row.
fn looks_like_shape(s: &TensorSpec, batched: bool) -> bool {
    s.dtype.is_integer() && (s.shape.is_empty() || (s.shape.len() == 1 && !batched))
}

/// `warmup/*.json`: V2 infer request bodies, run in name order, each with the
/// name errors give it; `None` without such a folder.
fn from_folder(
    mv: &ModelVersion,
    folder: &Path,
    decode: Decoder,
) -> Result<Option<Vec<(String, InferRequest)>>> {
    let Ok(rd) = std::fs::read_dir(folder) else {
        return Ok(None);
    };
    let mut files: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let req = read_file(&f, mv, decode)
            .map_err(|e| Error::load(format!("warm-up file {}: {e}", f.display())))?;
        out.push((format!("warm-up file {}", f.display()), req));
    }
    Ok((!out.is_empty()).then_some(out))
}

/// The most a warm-up file may hold: a model folder can come from a registry,
/// so its files are bounded as a client's body is by default (64 MiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

fn read_file(f: &Path, mv: &ModelVersion, decode: Decoder) -> Result<InferRequest> {
    let len = std::fs::metadata(f)
        .map_err(|e| Error::load(e.to_string()))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(Error::load(format!(
            "{len} bytes, more than the {MAX_FILE_BYTES} a warm-up file may hold"
        )));
    }
    let body = std::fs::read(f).map_err(|e| Error::load(e.to_string()))?;
    decode(&body, &mv.model, mv.version)
}

/// One request, every dynamic dim 1: ones for integers (a zero count or divisor
/// is what fails most), zeros for floats, false, and empty strings for BYTES.
pub fn generated(model: &str, meta: &ModelMetadata) -> Result<InferRequest> {
    let inputs = meta
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = spec
                .shape
                .iter()
                .map(|&d| if d < 0 { 1 } else { d })
                .collect();
            let n = crate::core::tensor::element_count(&shape)
                .filter(|&n| n <= crate::core::tensor::MAX_ELEMENTS)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}' has shape {:?}, too large to generate",
                        spec.name, spec.shape
                    ))
                })?;
            let data = match spec.dtype {
                // A BYTES element is a 4-byte length; zero is the empty string.
                DataType::Bytes | DataType::Bool => vec![0u8; n * spec.dtype.size().unwrap_or(4)],
                d if d.is_integer() => one_of(d).repeat(n),
                d => vec![0u8; n * d.size().unwrap_or(1)],
            };
            Tensor::new(spec.name.clone(), spec.dtype, shape, Bytes::from(data))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    InferRequest::of_inputs(model, None, inputs)
}

/// The little-endian bytes of 1 in an integer type.
fn one_of(d: DataType) -> Vec<u8> {
    let mut v = vec![0u8; d.size().unwrap_or(1)];
    v[0] = 1;
    v
}

/// How an answer differs from the declared outputs.
enum Mismatch {
    /// An undeclared output, another datatype or another rank.
    Fatal(String),
    /// A dim the graph gives as a number came back as another.
    Dims(String),
}

/// Every output is declared, with its declared datatype, rank and fixed dims.
fn check_outputs(meta: &ModelMetadata, outputs: &[Tensor]) -> std::result::Result<(), Mismatch> {
    for t in outputs {
        let spec: &TensorSpec =
            meta.outputs
                .iter()
                .find(|s| s.name == t.name)
                .ok_or_else(|| {
                    Mismatch::Fatal(format!(
                        "the model answered an undeclared output '{}'",
                        t.name
                    ))
                })?;
        let said = || {
            format!(
                "output '{}' came back as {} {:?}, but the model declares {} {:?}",
                t.name, t.dtype, t.shape, spec.dtype, spec.shape
            )
        };
        if t.dtype != spec.dtype || t.shape.len() != spec.shape.len() {
            return Err(Mismatch::Fatal(said()));
        }
        if !spec
            .shape
            .iter()
            .zip(&t.shape)
            .all(|(&want, &got)| want < 0 || want == got)
        {
            return Err(Mismatch::Dims(said()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec::new(name, dtype, shape)
    }

    #[test]
    fn integer_inputs_are_ones_and_shape_like_ones_are_not_guessed() {
        let meta = ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: vec![
                spec("x", DataType::F32, &[-1, 2]),
                spec("ids", DataType::I32, &[1, 2]),
            ],
            outputs: vec![],
            max_batch_size: 0,
            optional_outputs: Vec::new(),
        };
        let r = generated("m", &meta).unwrap();
        assert_eq!(&r.inputs[0].data[..], &[0u8; 8][..]);
        assert_eq!(&r.inputs[1].data[..], &[1, 0, 0, 0, 1, 0, 0, 0][..]);
        assert!(!looks_like_shape(&meta.inputs[1], false));
        assert!(looks_like_shape(&spec("k", DataType::I64, &[1]), false));
        assert!(looks_like_shape(&spec("axis", DataType::I32, &[]), true));
        assert!(!looks_like_shape(&spec("x", DataType::F32, &[1]), false));
        // A batched model's [batch] of ids: one value a row.
        assert!(!looks_like_shape(&spec("ids", DataType::I64, &[-1]), true));
    }

    #[test]
    fn only_datatype_and_rank_are_fatal() {
        let meta = ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: vec![],
            outputs: vec![spec("y", DataType::F32, &[-1, 3])],
            max_batch_size: 0,
            optional_outputs: Vec::new(),
        };
        let t = |dtype, shape: &[i64]| Tensor {
            name: "y".into(),
            dtype,
            shape: shape.to_vec(),
            data: Bytes::new(),
        };
        assert!(check_outputs(&meta, &[t(DataType::F32, &[2, 3])]).is_ok());
        assert!(matches!(
            check_outputs(&meta, &[t(DataType::F32, &[2, 0])]),
            Err(Mismatch::Dims(_))
        ));
        assert!(matches!(
            check_outputs(&meta, &[t(DataType::F32, &[6])]),
            Err(Mismatch::Fatal(_))
        ));
        assert!(matches!(
            check_outputs(&meta, &[t(DataType::F64, &[2, 3])]),
            Err(Mismatch::Fatal(_))
        ));
    }
}
