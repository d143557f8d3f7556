//! The MLflow scoring codec (`/invocations`), shaped as `mlflow models serve` shapes
//! an ONNX model's answers: DataFrames in (`dataframe_split`, `dataframe_records`,
//! CSV) give records out; tensors in (`instances`, `inputs`) give named tensors out.

use serde_json::{json, Map, Value};

use super::json::{flat_values, tensor_to_value, Scalar, Sink};
use super::rows;
use crate::core::error::{Error, Result};
use crate::core::metadata::ModelMetadata;
use crate::core::request::{InferRequest, InferResponse};
use crate::core::tensor::Tensor;

/// What the request gave, which decides the shape of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Frame,
    Tensors,
}

/// A CSV DataFrame with a header row, straight into the inputs' tensors (as a
/// JSON DataFrame is, [`rows::RowsOf::Split`]): a field is a number when it
/// reads as one, a boolean, else a string. One input takes the rows of values
/// (one column of a 1-D input is that input); several take a column each, by name.
fn tensors_from_csv(body: &[u8], meta: &ModelMetadata) -> Result<Vec<Tensor>> {
    let bad = |e: csv::Error| Error::invalid(format!("malformed CSV: {e}"));
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body);
    let columns: Vec<String> = r
        .headers()
        .map_err(bad)?
        .iter()
        .map(str::to_string)
        .collect();
    let one = meta.inputs.len() == 1;
    // The input each column feeds.
    let feeds: Vec<Option<usize>> = if one {
        vec![Some(0); columns.len()]
    } else {
        rows::column_feeds(&columns, meta)
    };
    if let Some(spec) = meta
        .inputs
        .iter()
        .enumerate()
        .find(|(i, _)| !one && !feeds.contains(&Some(*i)))
        .map(|(_, s)| s)
    {
        return Err(Error::invalid(rows::no_column(meta, &spec.name)));
    }
    let mut sinks: Vec<Sink> = meta
        .inputs
        .iter()
        .map(|s| Sink {
            dtype: s.dtype,
            out: Vec::new(),
        })
        .collect();
    let mut rows = 0i64;
    for rec in r.records() {
        let rec = rec.map_err(bad)?;
        for ((field, at), col) in rec.iter().zip(&feeds).zip(&columns) {
            let Some(at) = *at else { continue };
            let f = field.trim();
            let v = if let Ok(i) = f.parse::<i64>() {
                Scalar::I64(i)
            } else if let Ok(x) = f.parse::<f64>() {
                // As a JSON DataFrame cannot carry them, nor can a CSV one.
                if !x.is_finite() {
                    return Err(Error::invalid(format!(
                        "row {rows}, column '{col}': {f} is not a finite number"
                    )));
                }
                Scalar::F64(x)
            } else if f.eq_ignore_ascii_case("true") || f.eq_ignore_ascii_case("false") {
                Scalar::Bool(f.eq_ignore_ascii_case("true"))
            } else {
                Scalar::Str(f)
            };
            sinks[at]
                .push(v)
                .map_err(|e| Error::invalid(format!("row {rows}, column '{col}': {e}")))?;
        }
        rows += 1;
    }
    let flat = one && columns.len() == 1 && meta.inputs[0].shape.len() == 1;
    meta.inputs
        .iter()
        .zip(sinks)
        .map(|(spec, sink)| {
            let shape = if one && !flat {
                vec![rows, columns.len() as i64]
            } else {
                vec![rows]
            };
            Tensor::new(spec.name.clone(), spec.dtype, shape, sink.out.into())
        })
        .collect()
}

/// Decodes an `/invocations` body (`application/json` or `text/csv`).
pub fn decode(
    body: &[u8],
    content_type: Option<&str>,
    meta: &ModelMetadata,
    model: &str,
    version: Option<u64>,
) -> Result<(InferRequest, Shape)> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let (inputs, shape) = if media.as_deref() == Some("text/csv") {
        (tensors_from_csv(body, meta)?, Shape::Frame)
    } else {
        let keys = [
            "dataframe_split",
            "dataframe_records",
            "instances",
            "inputs",
        ];
        let b = rows::parse(
            body,
            meta,
            &[
                ("dataframe_split", rows::RowsOf::Split),
                ("dataframe_records", rows::RowsOf::Records),
                ("instances", rows::RowsOf::Instances),
                ("inputs", rows::RowsOf::Inputs),
            ],
        )?;
        match (b.given.as_slice(), b.rows) {
            ([_], Some((rows::RowsOf::Split | rows::RowsOf::Records, t))) => (t, Shape::Frame),
            ([_], Some((_, t))) => (t, Shape::Tensors),
            ([], _) => {
                return Err(Error::invalid(format!(
                    "the request has none of {}",
                    keys.join(", ")
                )))
            }
            (given, _) => {
                return Err(Error::invalid(format!(
                    "give only one of {}",
                    given.join(", ")
                )))
            }
        }
    };
    Ok((InferRequest::of_inputs(model, version, inputs)?, shape))
}

/// Encodes `{"predictions": ...}`: records of the flattened outputs for a DataFrame
/// (MLflow's ONNX flavour flattens each output to one column), or every output by
/// name for tensors.
pub fn encode(resp: &InferResponse, shape: Shape) -> Result<Vec<u8>> {
    let predictions = match shape {
        Shape::Tensors => Value::Object(
            resp.outputs
                .iter()
                .map(|t| Ok((t.name.clone(), tensor_to_value(t)?)))
                .collect::<Result<Map<_, _>>>()?,
        ),
        Shape::Frame => {
            let columns: Vec<Vec<Value>> = resp.outputs.iter().map(flat_values).collect();
            let n = columns.first().map_or(0, Vec::len);
            if columns.iter().any(|c| c.len() != n) {
                return Err(Error::invalid(format!(
                    "the outputs {} flatten to different lengths, so they do not fit one \
                     DataFrame (MLflow fails the same way); send 'instances' or 'inputs' to get \
                     each output whole",
                    resp.outputs
                        .iter()
                        .map(|t| format!("'{}' {:?}", t.name, t.shape))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Value::Array(
                (0..n)
                    .map(|i| {
                        Value::Object(
                            resp.outputs
                                .iter()
                                .zip(&columns)
                                .map(|(t, c)| (t.name.clone(), c[i].clone()))
                                .collect(),
                        )
                    })
                    .collect(),
            )
        }
    };
    Ok(serde_json::to_vec(&json!({ "predictions": predictions })).expect("plain data"))
}

/// Whether an `/invocations` JSON body is a KServe V2 infer request (`inputs`
/// as named, typed tensors) rather than MLflow's `inputs` (a dict or rows):
/// SageMaker's clients send either to the one route.
fn is_v2(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        inputs: Vec<ProbeTensor>,
    }
    #[derive(serde::Deserialize)]
    struct ProbeTensor {
        #[allow(dead_code)]
        datatype: String,
    }
    // Only a body that names a datatype can be one: MLflow's never pays a second parse.
    body.windows(10).any(|w| w == b"\"datatype\"")
        && serde_json::from_slice::<Probe>(body).is_ok_and(|p| !p.inputs.is_empty())
}

/// How an `/invocations` answer is shaped: as MLflow shapes it, or as a V2
/// infer response to a V2 request.
pub enum Answer {
    Mlflow(Shape),
    V2(super::v2::OutputFormat),
}

/// `POST /invocations` and `/models/{m}/invocations` in the one pipeline; the
/// request's `Content-Type` chooses JSON or CSV, and a JSON body that is a V2
/// infer request is answered as one.
pub struct Codec {
    pub content_type: Option<String>,
}

impl super::pipeline::Codec for Codec {
    type Input = bytes::Bytes;
    type Output = super::http::HttpResponse;
    type Shape = Answer;
    const PROTOCOL: crate::core::request::Protocol = crate::core::request::Protocol::Http;
    const NEEDS_METADATA: bool = true;

    fn decode(
        &self,
        body: bytes::Bytes,
        call: &super::pipeline::Call<'_>,
        meta: Option<&ModelMetadata>,
    ) -> Result<(InferRequest, Answer)> {
        let meta = super::pipeline::given(meta)?;
        let csv = self
            .content_type
            .as_deref()
            .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("text/csv"));
        if !csv && is_v2(&body) {
            let (req, format) = super::v2::decode_request(&body, None, call.model, call.version)?;
            return Ok((req, Answer::V2(format)));
        }
        let (req, shape) = decode(
            &body,
            self.content_type.as_deref(),
            meta,
            call.model,
            call.version,
        )?;
        Ok((req, Answer::Mlflow(shape)))
    }

    fn encode(&self, response: InferResponse, shape: Answer) -> Result<Self::Output> {
        match shape {
            Answer::Mlflow(shape) => Ok(super::http::json_ok(encode(&response, shape)?)),
            Answer::V2(format) => Ok(match super::v2::encode_response(&response, &format) {
                (body, None) => super::http::json_ok(body),
                (body, Some(n)) => {
                    let mut r = super::http::binary(body);
                    r.headers_mut()
                        .insert(super::v2::INFERENCE_HEADER, http::HeaderValue::from(n));
                    r
                }
            }),
        }
    }
}
