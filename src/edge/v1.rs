//! The KServe V1 / TF Serving codec: `{"instances": [...]}` rows or `{"inputs": ...}`
//! columns in, `{"predictions": [...]}` or `{"outputs": ...}` out.

use serde_json::{json, Map, Value};

use super::json::{rows_of, tensor_to_value};
use super::rows;
use crate::core::error::{Error, Result};
use crate::core::metadata::ModelMetadata;
use crate::core::request::{InferRequest, InferResponse};
use crate::core::tensor::Tensor;

/// Which of TF Serving's two request layouts a request used; the answer uses the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `instances`: one entry per row; answered with `predictions`, one per row.
    Rows,
    /// `inputs`: whole tensors; answered with `outputs`.
    Columns,
}

/// Decodes a `:predict` body against the model's inputs; `instances` are read
/// straight into tensors ([`super::rows`]).
pub fn decode_predict(
    body: &[u8],
    meta: &ModelMetadata,
    model: &str,
    version: Option<u64>,
) -> Result<(InferRequest, Layout)> {
    let b = rows::parse(
        body,
        meta,
        &[
            ("instances", rows::RowsOf::Instances),
            ("inputs", rows::RowsOf::Inputs),
        ],
    )?;
    let (inputs, layout) = match (b.given.as_slice(), b.rows) {
        ([_], Some((rows::RowsOf::Instances, t))) => (t, Layout::Rows),
        ([_], Some((_, t))) => (t, Layout::Columns),
        ([], _) => {
            return Err(Error::invalid(
                "the request has neither 'instances' nor 'inputs'",
            ))
        }
        _ => return Err(Error::invalid("give 'instances' or 'inputs', not both")),
    };
    Ok((InferRequest::of_inputs(model, version, inputs)?, layout))
}

/// Per-row predictions: a row of the only output, or an object of every output's row.
pub fn predictions_by_row(outputs: &[Tensor]) -> Result<Vec<Value>> {
    if let [only] = outputs {
        return rows_of(only);
    }
    let columns = outputs.iter().map(rows_of).collect::<Result<Vec<_>>>()?;
    let n = columns.first().map_or(0, Vec::len);
    if columns.iter().any(|c| c.len() != n) {
        return Err(Error::invalid(
            "the outputs have different numbers of rows; use the 'inputs' form to get whole tensors",
        ));
    }
    Ok((0..n)
        .map(|i| {
            Value::Object(
                outputs
                    .iter()
                    .zip(&columns)
                    .map(|(t, c)| (t.name.clone(), c[i].clone()))
                    .collect::<Map<_, _>>(),
            )
        })
        .collect())
}

/// Whole output tensors: the only one's value, or an object naming each.
pub fn outputs_by_name(outputs: &[Tensor]) -> Result<Value> {
    if let [only] = outputs {
        return tensor_to_value(only);
    }
    Ok(Value::Object(
        outputs
            .iter()
            .map(|t| Ok((t.name.clone(), tensor_to_value(t)?)))
            .collect::<Result<Map<_, _>>>()?,
    ))
}

pub fn encode_predict(resp: &InferResponse, layout: Layout) -> Result<Vec<u8>> {
    let body = match layout {
        Layout::Rows => json!({ "predictions": predictions_by_row(&resp.outputs)? }),
        Layout::Columns => json!({ "outputs": outputs_by_name(&resp.outputs)? }),
    };
    Ok(serde_json::to_vec(&body).expect("plain data"))
}

/// `POST /v1/models/{m}:predict` in the one pipeline.
pub struct Codec;

impl super::pipeline::Codec for Codec {
    type Input = bytes::Bytes;
    type Output = super::http::HttpResponse;
    type Shape = Layout;
    const PROTOCOL: crate::core::request::Protocol = crate::core::request::Protocol::Http;
    const NEEDS_METADATA: bool = true;

    fn decode(
        &self,
        body: bytes::Bytes,
        call: &super::pipeline::Call<'_>,
        meta: Option<&ModelMetadata>,
    ) -> Result<(InferRequest, Layout)> {
        let meta = super::pipeline::given(meta)?;
        decode_predict(&body, meta, call.model, call.version)
    }

    fn encode(&self, response: InferResponse, layout: Layout) -> Result<Self::Output> {
        Ok(super::http::json_ok(encode_predict(&response, layout)?))
    }
}
