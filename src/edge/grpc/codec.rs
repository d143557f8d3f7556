//! The gRPC codec: Open Inference Protocol messages to and from the protocol-neutral request.

use std::collections::HashMap;

use bytes::Bytes;

use super::proto as pb;
use crate::core::error::{Error, Result};
use crate::core::request::{InferRequest, InferResponse, Parameters, RequestedOutput};
use crate::core::tensor::{encode_bytes_elements, BytesIter, DataType, Tensor};

fn param_to_json(p: &pb::InferParameter) -> serde_json::Value {
    use pb::infer_parameter::ParameterChoice as P;
    match &p.parameter_choice {
        Some(P::BoolParam(b)) => (*b).into(),
        Some(P::Int64Param(i)) => (*i).into(),
        Some(P::StringParam(s)) => s.clone().into(),
        Some(P::DoubleParam(d)) => (*d).into(),
        Some(P::Uint64Param(u)) => (*u).into(),
        None => serde_json::Value::Null,
    }
}

fn params(map: &HashMap<String, pb::InferParameter>, what: &str) -> Result<Parameters> {
    for key in ["shared_memory_region", "classification"] {
        if map.contains_key(key) {
            return Err(Error::invalid(format!(
                "{what}: parameter '{key}' is not supported by this server"
            )));
        }
    }
    Ok(map
        .iter()
        .map(|(k, v)| (k.clone(), param_to_json(v)))
        .collect())
}

/// Decodes a ModelInferRequest. The flag says whether it used
/// `raw_input_contents`, in which case the answer uses `raw_output_contents`.
pub fn decode_request(req: pb::ModelInferRequest) -> Result<(InferRequest, bool)> {
    let version = crate::core::metadata::parse_version(&req.model_name, &req.model_version)?;
    // Answered in kind: typed contents only to a request that sent typed
    // contents; raw otherwise, as Triton always answers (a model with no inputs
    // too: tritonclient reads only raw contents).
    let raw = !req.inputs.iter().any(|i| i.contents.is_some());
    if !req.raw_input_contents.is_empty() && req.raw_input_contents.len() != req.inputs.len() {
        return Err(Error::invalid(format!(
            "raw_input_contents has {} entries but the request has {} inputs; \
             with raw contents every input needs one",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut raw_contents = req.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let what = format!("input '{}'", input.name);
        let dtype = DataType::parse(&input.datatype).ok_or_else(|| {
            Error::invalid(format!("{what}: unknown datatype '{}'", input.datatype))
        })?;
        params(&input.parameters, &what)?;
        let data = match (raw_contents.next(), &input.contents) {
            (Some(bytes), None) => bytes,
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "{what}: has both contents and raw_input_contents"
                )))
            }
            (None, Some(c)) => typed_to_bytes(&what, dtype, c)?,
            (None, None) => {
                return Err(Error::invalid(format!(
                    "{what}: no data (neither contents nor raw_input_contents)"
                )))
            }
        };
        inputs.push(Tensor::new(input.name, dtype, input.shape, data)?);
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for o in req.outputs {
        let parameters = params(&o.parameters, &format!("output '{}'", o.name))?;
        outputs.push(RequestedOutput {
            name: o.name,
            parameters,
        });
    }
    Ok((
        InferRequest {
            id: (!req.id.is_empty()).then_some(req.id),
            model: req.model_name,
            version,
            inputs,
            outputs,
            parameters: params(&req.parameters, "request")?,
            deadline: None,
            protocol: crate::core::request::Protocol::Grpc,
            ..Default::default()
        },
        raw,
    ))
}

/// Which typed field carries a datatype, by name, for error messages.
fn field_of(dtype: DataType) -> Option<&'static str> {
    Some(match dtype {
        DataType::Bool => "bool_contents",
        DataType::I8 | DataType::I16 | DataType::I32 => "int_contents",
        DataType::I64 => "int64_contents",
        DataType::U8 | DataType::U16 | DataType::U32 => "uint_contents",
        DataType::U64 => "uint64_contents",
        DataType::F32 => "fp32_contents",
        DataType::F64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::F16 | DataType::BF16 => return None,
    })
}

fn total_elements(c: &pb::InferTensorContents) -> usize {
    c.bool_contents.len()
        + c.int_contents.len()
        + c.int64_contents.len()
        + c.uint_contents.len()
        + c.uint64_contents.len()
        + c.fp32_contents.len()
        + c.fp64_contents.len()
        + c.bytes_contents.len()
}

macro_rules! narrow {
    ($what:expr, $src:expr, $t:ty, $dtype:expr) => {{
        let mut out = Vec::with_capacity($src.len() * std::mem::size_of::<$t>());
        for &v in $src {
            let n = <$t>::try_from(v).map_err(|_| {
                Error::invalid(format!("{}: {} is not a valid {} value", $what, v, $dtype))
            })?;
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }};
}

fn le<T: Copy, const N: usize>(src: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() * N);
    for &v in src {
        out.extend_from_slice(&f(v));
    }
    out
}

fn typed_to_bytes(what: &str, dtype: DataType, c: &pb::InferTensorContents) -> Result<Bytes> {
    let Some(field) = field_of(dtype) else {
        return Err(Error::invalid(format!(
            "{what}: {dtype} has no typed contents field; send it in raw_input_contents"
        )));
    };
    let data = match dtype {
        DataType::Bool => c.bool_contents.iter().map(|&b| b as u8).collect(),
        DataType::I8 => narrow!(what, &c.int_contents, i8, dtype),
        DataType::I16 => narrow!(what, &c.int_contents, i16, dtype),
        DataType::I32 => le(&c.int_contents, i32::to_le_bytes),
        DataType::I64 => le(&c.int64_contents, i64::to_le_bytes),
        DataType::U8 => narrow!(what, &c.uint_contents, u8, dtype),
        DataType::U16 => narrow!(what, &c.uint_contents, u16, dtype),
        DataType::U32 => le(&c.uint_contents, u32::to_le_bytes),
        DataType::U64 => le(&c.uint64_contents, u64::to_le_bytes),
        DataType::F32 => le(&c.fp32_contents, f32::to_le_bytes),
        DataType::F64 => le(&c.fp64_contents, f64::to_le_bytes),
        DataType::Bytes => {
            return Ok(encode_bytes_elements(
                c.bytes_contents.iter().map(|b| &b[..]),
            ))
        }
        DataType::F16 | DataType::BF16 => unreachable!("no typed field"),
    };
    let elems = data.len() / dtype.size().expect("fixed size");
    if elems != total_elements(c) {
        return Err(Error::invalid(format!(
            "{what}: {dtype} data goes in contents.{field}, but other fields are set"
        )));
    }
    Ok(Bytes::from(data))
}

fn chunks<const N: usize, T>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| f(c.try_into().expect("N bytes")))
        .collect()
}

fn bytes_to_typed(t: &Tensor) -> pb::InferTensorContents {
    let d = &t.data[..];
    let mut c = pb::InferTensorContents::default();
    match t.dtype {
        DataType::Bool => c.bool_contents = d.iter().map(|&b| b != 0).collect(),
        DataType::I8 => c.int_contents = d.iter().map(|&b| b as i8 as i32).collect(),
        DataType::I16 => c.int_contents = chunks(d, |b| i16::from_le_bytes(b) as i32),
        DataType::I32 => c.int_contents = chunks(d, i32::from_le_bytes),
        DataType::I64 => c.int64_contents = chunks(d, i64::from_le_bytes),
        DataType::U8 => c.uint_contents = d.iter().map(|&b| b as u32).collect(),
        DataType::U16 => c.uint_contents = chunks(d, |b| u16::from_le_bytes(b) as u32),
        DataType::U32 => c.uint_contents = chunks(d, u32::from_le_bytes),
        DataType::U64 => c.uint64_contents = chunks(d, u64::from_le_bytes),
        DataType::F32 => c.fp32_contents = chunks(d, f32::from_le_bytes),
        DataType::F64 => c.fp64_contents = chunks(d, f64::from_le_bytes),
        DataType::Bytes => {
            c.bytes_contents = BytesIter::new(d)
                .map(|e| Bytes::copy_from_slice(e.unwrap_or_default()))
                .collect()
        }
        DataType::F16 | DataType::BF16 => unreachable!("sent raw"),
    }
    c
}

/// Encodes a response: raw contents when the request was raw, or when an output
/// has no typed field (FP16, BF16); typed contents otherwise.
pub fn encode_response(resp: InferResponse, raw: bool) -> pb::ModelInferResponse {
    let raw = raw || resp.outputs.iter().any(|t| field_of(t.dtype).is_none());
    let mut out = pb::ModelInferResponse {
        model_name: resp.model.to_string(),
        model_version: resp.version.to_string(),
        id: resp.id.unwrap_or_default(),
        ..Default::default()
    };
    for t in resp.outputs {
        out.outputs
            .push(pb::model_infer_response::InferOutputTensor {
                contents: (!raw).then(|| bytes_to_typed(&t)),
                name: t.name,
                datatype: t.dtype.as_str().to_string(),
                shape: t.shape,
                parameters: HashMap::new(),
            });
        if raw {
            out.raw_output_contents.push(t.data);
        }
    }
    out
}

/// `ModelInfer` (and each message of `ModelStreamInfer`) in the one pipeline.
pub struct Codec;

impl crate::edge::pipeline::Codec for Codec {
    type Input = pb::ModelInferRequest;
    type Output = pb::ModelInferResponse;
    /// Whether to answer in raw contents.
    type Shape = bool;
    const PROTOCOL: crate::core::request::Protocol = crate::core::request::Protocol::Grpc;
    const NEEDS_METADATA: bool = false;

    fn decode(
        &self,
        msg: pb::ModelInferRequest,
        _: &crate::edge::pipeline::Call<'_>,
        _: Option<&crate::core::metadata::ModelMetadata>,
    ) -> Result<(InferRequest, bool)> {
        decode_request(msg)
    }

    fn encode(&self, response: InferResponse, raw: bool) -> Result<pb::ModelInferResponse> {
        Ok(encode_response(response, raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::ErrorStatus;

    fn input(
        name: &str,
        dtype: &str,
        shape: Vec<i64>,
        c: pb::InferTensorContents,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: dtype.into(),
            shape,
            parameters: HashMap::new(),
            contents: Some(c),
        }
    }

    #[test]
    fn typed_contents_round_trip_and_are_range_checked() {
        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![
                input(
                    "a",
                    "INT8",
                    vec![2],
                    pb::InferTensorContents {
                        int_contents: vec![-128, 127],
                        ..Default::default()
                    },
                ),
                input(
                    "b",
                    "BYTES",
                    vec![2],
                    pb::InferTensorContents {
                        bytes_contents: vec![Bytes::from_static(b"x"), Bytes::new()],
                        ..Default::default()
                    },
                ),
                input(
                    "c",
                    "UINT64",
                    vec![1],
                    pb::InferTensorContents {
                        uint64_contents: vec![u64::MAX],
                        ..Default::default()
                    },
                ),
            ],
            ..Default::default()
        };
        let (r, raw) = decode_request(req).unwrap();
        assert!(!raw);
        let resp = encode_response(
            InferResponse {
                id: None,
                model: "m".into(),
                version: 1,
                outputs: r.inputs,
                parameters: Default::default(),
            },
            false,
        );
        assert_eq!(
            resp.outputs[0].contents.as_ref().unwrap().int_contents,
            vec![-128, 127]
        );
        assert_eq!(
            resp.outputs[1].contents.as_ref().unwrap().bytes_contents[0],
            Bytes::from_static(b"x")
        );
        assert_eq!(
            resp.outputs[2].contents.as_ref().unwrap().uint64_contents,
            vec![u64::MAX]
        );

        let bad = pb::ModelInferRequest {
            inputs: vec![input(
                "a",
                "INT8",
                vec![1],
                pb::InferTensorContents {
                    int_contents: vec![300],
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        assert!(decode_request(bad)
            .unwrap_err()
            .to_string()
            .contains("300 is not a valid INT8"));
        let wrong_field = pb::ModelInferRequest {
            inputs: vec![input(
                "a",
                "INT64",
                vec![1],
                pb::InferTensorContents {
                    int_contents: vec![3],
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let e = decode_request(wrong_field).unwrap_err().to_string();
        assert!(e.contains("int64_contents"), "{e}");
        let fp16 = pb::ModelInferRequest {
            inputs: vec![input(
                "h",
                "FP16",
                vec![1],
                pb::InferTensorContents::default(),
            )],
            ..Default::default()
        };
        assert!(decode_request(fp16)
            .unwrap_err()
            .to_string()
            .contains("raw_input_contents"));
    }

    #[test]
    fn raw_contents_must_cover_every_input() {
        let mut i = input("a", "FP32", vec![1], pb::InferTensorContents::default());
        i.contents = None;
        let req = pb::ModelInferRequest {
            inputs: vec![i.clone(), i],
            raw_input_contents: vec![Bytes::from_static(&[0, 0, 128, 63])],
            ..Default::default()
        };
        let e = decode_request(req).unwrap_err();
        assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("every input"), "{e}");
    }
}
