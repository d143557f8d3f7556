//! Warm-up of a freshly loaded version before it is published: requests run
//! through its real workers (the files in its `warmup/` folder, or one generated
//! from its metadata), and every answer is checked against the outputs the
//! version declares. A version that fails here never serves.

use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::infer::InferRequest;
use crate::model::{ModelMetadata, ModelVersion, TensorSpec};
use crate::tensor::Tensor;

/// Runs the warm-up requests of `mv`, whose files are in `dir`; returns how many ran.
pub fn warm_up(mv: &ModelVersion, dir: &Path) -> Result<usize> {
    let requests = match from_folder(mv, &dir.join("warmup"))? {
        Some(r) => r,
        None => vec![(
            "the generated warm-up request".to_string(),
            generated(&mv.model, &mv.metadata)?,
        )],
    };
    for (what, req) in &requests {
        let outputs = mv
            .infer_blocking(req.clone())
            .map_err(|e| Error::load(format!("{what}: {e}")))?;
        check_outputs(&mv.metadata, &outputs).map_err(|e| Error::load(format!("{what}: {e}")))?;
    }
    // last_compute_ns stays: it is what the first lone request can expect.
    mv.stats.reset();
    Ok(requests.len())
}

/// `warmup/*.json`: V2 infer request bodies, run in name order, each with the
/// name errors give it; `None` without such a folder.
fn from_folder(mv: &ModelVersion, folder: &Path) -> Result<Option<Vec<(String, InferRequest)>>> {
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
        let body = std::fs::read(&f)
            .map_err(|e| Error::load(format!("warm-up file {}: {e}", f.display())))?;
        let (req, _) =
            crate::api::v2::decode_request(&Bytes::from(body), None, &mv.model, Some(mv.version))
                .map_err(|e| Error::load(format!("warm-up file {}: {e}", f.display())))?;
        out.push((format!("warm-up file {}", f.display()), req));
    }
    Ok((!out.is_empty()).then_some(out))
}

/// One request of zeros (empty strings for BYTES), every dynamic dim 1.
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
            let n = shape.iter().product::<i64>().max(0) as usize;
            // A BYTES element is a 4-byte length; zero is the empty string.
            let width = spec.dtype.size().unwrap_or(4);
            Tensor::new(
                spec.name.clone(),
                spec.dtype,
                shape,
                Bytes::from(vec![0u8; n * width]),
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    InferRequest::of_inputs(model, None, inputs)
}

/// Every output is declared, with its declared datatype, rank and fixed dims.
fn check_outputs(meta: &ModelMetadata, outputs: &[Tensor]) -> Result<()> {
    for t in outputs {
        let spec: &TensorSpec =
            meta.outputs
                .iter()
                .find(|s| s.name == t.name)
                .ok_or_else(|| {
                    Error::load(format!(
                        "the model answered an undeclared output '{}'",
                        t.name
                    ))
                })?;
        let fits = t.shape.len() == spec.shape.len()
            && spec
                .shape
                .iter()
                .zip(&t.shape)
                .all(|(&want, &got)| want < 0 || want == got);
        if t.dtype != spec.dtype || !fits {
            return Err(Error::load(format!(
                "output '{}' came back as {} {:?}, but the model declares {} {:?}",
                t.name, t.dtype, t.shape, spec.dtype, spec.shape
            )));
        }
    }
    Ok(())
}
