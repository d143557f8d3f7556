//! The MLflow scoring codec (`/invocations`), shaped as `mlflow models serve` shapes
//! an ONNX model's answers: DataFrames in (`dataframe_split`, `dataframe_records`,
//! CSV) give records out; tensors in (`instances`, `inputs`) give named tensors out.

use serde_json::{json, Map, Value};

use super::json::{flat_values, tensor_from_value, tensor_to_value};
use super::rows;
use super::v1::tensors_from_columns;
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse};
use crate::model::ModelMetadata;
use crate::tensor::Tensor;

/// What the request gave, which decides the shape of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Frame,
    Tensors,
}

/// A DataFrame as columns and rows of JSON scalars.
struct Frame {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

fn frame_from_split(v: Value) -> Result<Frame> {
    let Value::Object(mut o) = v else {
        return Err(Error::invalid(
            "'dataframe_split' must be an object with 'columns' and 'data'",
        ));
    };
    let rows = match o.remove("data") {
        Some(Value::Array(rows)) => rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Value::Array(cells) => Ok(cells),
                _ => Err(Error::invalid(format!(
                    "dataframe_split.data[{i}] is not a list"
                ))),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => {
            return Err(Error::invalid(
                "dataframe_split needs 'data', a list of rows",
            ))
        }
    };
    let width = rows.first().map_or(0, Vec::len);
    let columns = match o.remove("columns") {
        Some(Value::Array(c)) => c
            .into_iter()
            .map(|c| match c {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        None => (0..width).map(|i| i.to_string()).collect(),
        Some(_) => return Err(Error::invalid("dataframe_split.columns must be a list")),
    };
    Ok(Frame { columns, rows })
}

/// CSV with a header row; a field is a number when it reads as one, else a string.
fn frame_from_csv(body: &[u8]) -> Result<Frame> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body);
    let columns = r
        .headers()
        .map_err(|e| Error::invalid(format!("malformed CSV: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| Error::invalid(format!("malformed CSV: {e}")))?;
        rows.push(
            rec.iter()
                .map(|f| {
                    let f = f.trim();
                    if let Ok(i) = f.parse::<i64>() {
                        json!(i)
                    } else if let Ok(x) = f.parse::<f64>() {
                        json!(x)
                    } else if f.eq_ignore_ascii_case("true") || f.eq_ignore_ascii_case("false") {
                        json!(f.eq_ignore_ascii_case("true"))
                    } else {
                        json!(f)
                    }
                })
                .collect(),
        );
    }
    Ok(Frame { columns, rows })
}

/// As MLflow's ONNX flavour feeds a DataFrame: one input takes the whole matrix of
/// values (or its one column, for a 1-D input); several inputs take one column each,
/// by name.
fn tensors_from_frame(f: Frame, meta: &ModelMetadata) -> Result<Vec<Tensor>> {
    if let [only] = meta.inputs.as_slice() {
        let value = if only.shape.len() == 1 && f.columns.len() == 1 {
            let cells = f.rows.into_iter().enumerate().map(|(i, r)| {
                <[Value; 1]>::try_from(r).map(|[v]| v).map_err(|r| {
                    Error::invalid(format!(
                        "row {i} has {} values, but the DataFrame has one column",
                        r.len()
                    ))
                })
            });
            Value::Array(cells.collect::<Result<_>>()?)
        } else {
            Value::Array(f.rows.into_iter().map(Value::Array).collect())
        };
        return Ok(vec![tensor_from_value(&only.name, only.dtype, &value)?]);
    }
    meta.inputs
        .iter()
        .map(|spec| {
            let i = f
                .columns
                .iter()
                .position(|c| c == &spec.name)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "the DataFrame has no column '{}'; this model's inputs are the columns {}",
                        spec.name,
                        meta.inputs
                            .iter()
                            .map(|s| format!("'{}'", s.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            let column = f
                .rows
                .iter()
                .map(|r| r.get(i).cloned().unwrap_or(Value::Null))
                .collect();
            tensor_from_value(&spec.name, spec.dtype, &Value::Array(column))
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
        (
            tensors_from_frame(frame_from_csv(body)?, meta)?,
            Shape::Frame,
        )
    } else {
        let keys = [
            "dataframe_split",
            "dataframe_records",
            "instances",
            "inputs",
        ];
        let mut b = rows::parse(
            body,
            meta,
            &[
                ("dataframe_records", rows::RowsOf::Records),
                ("instances", rows::RowsOf::Instances),
            ],
            &["dataframe_split", "inputs"],
        )?;
        match (b.given.as_slice(), b.rows.take(), b.values.pop()) {
            ([_], Some((rows::RowsOf::Records, t)), None) => (t, Shape::Frame),
            ([_], Some((rows::RowsOf::Instances, t)), None) => (t, Shape::Tensors),
            (["dataframe_split"], None, Some((_, v))) => (
                tensors_from_frame(frame_from_split(v)?, meta)?,
                Shape::Frame,
            ),
            (["inputs"], None, Some((_, v))) => (tensors_from_columns(&v, meta)?, Shape::Tensors),
            ([], ..) => {
                return Err(Error::invalid(format!(
                    "the request has none of {}",
                    keys.join(", ")
                )))
            }
            (given, ..) => {
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
                .map(|t| (t.name.clone(), tensor_to_value(t)))
                .collect::<Map<_, _>>(),
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
