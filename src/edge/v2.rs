//! The KServe V2 / Open Inference Protocol JSON codec: bytes in, [`InferRequest`] out, and back.

use bytes::Bytes;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use super::json::{parse_data, DataJson};
use crate::core::config::VersionPolicy;
use crate::core::error::{Error, Result};
use crate::core::request::{InferRequest, InferResponse, Parameters, RequestedOutput};
use crate::core::tensor::{DataType, Tensor};
use crate::serving::{
    ConfigTensor, IndexEntry, Model, ModelMetadata, ServingConfig, TensorSpec, VersionState,
};

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    #[allow(dead_code)] // read by the binary extension later; accepted now
    parameters: Option<Parameters>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// How the outputs of one request are to be written: as JSON `data`, or as raw
/// bytes after the JSON header (Triton's binary tensor data extension).
#[derive(Debug, Clone, Default)]
pub struct OutputFormat {
    /// Request-level `parameters.binary_data_output`.
    binary_default: bool,
    /// Per requested output: its own `parameters.binary_data`, when given.
    binary: Vec<(String, bool)>,
}

impl OutputFormat {
    fn is_binary(&self, output: &str) -> bool {
        self.binary
            .iter()
            .find(|(n, _)| n == output)
            .map(|(_, b)| *b)
            .unwrap_or(self.binary_default)
    }
}

/// What an error message names: `input 'x'`, formatted only when one is
/// made (a `format!` per input took 400 instructions of every request).
struct Named<'a>(&'static str, &'a str);

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} '{}'", self.0, self.1)
    }
}

fn bool_param(p: &Parameters, key: &str, what: &dyn std::fmt::Display) -> Result<Option<bool>> {
    match p.get(key) {
        None => Ok(None),
        Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(Error::invalid(format!(
            "{what}: parameter '{key}' must be true or false, got {v}"
        ))),
    }
}

/// Parameters of Triton's that ask for features this server does not have: refused
/// by name rather than ignored, so the client learns why its answer is not as asked.
fn refuse_unsupported(p: &Parameters, what: &dyn std::fmt::Display) -> Result<()> {
    for key in ["shared_memory_region", "classification"] {
        if p.contains_key(key) {
            return Err(Error::invalid(format!(
                "{what}: parameter '{key}' is not supported by this server"
            )));
        }
    }
    Ok(())
}

/// Decodes a warm-up file (`warmup/*.json`, a V2 JSON request body) into a
/// request to `(model, version)`: the repository's warm-up reads its files so.
pub fn decode_warmup_file(body: &[u8], model: &str, version: u64) -> Result<InferRequest> {
    let body = Bytes::copy_from_slice(body);
    Ok(decode_request(&body, None, model, Some(version))?.0)
}

/// Decodes a V2 infer request body: JSON, or with `json_len` (the
/// `Inference-Header-Content-Length` header) a JSON header followed by the binary
/// data of the inputs that give `parameters.binary_data_size`. Binary inputs are
/// slices of `body`, not copies.
pub fn decode_request(
    body: &Bytes,
    json_len: Option<usize>,
    model: &str,
    version: Option<u64>,
) -> Result<(InferRequest, OutputFormat)> {
    let json_len = json_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(Error::invalid(format!(
            "Inference-Header-Content-Length is {json_len} but the body has only {} bytes",
            body.len()
        )));
    }
    let binary = body.slice(json_len..);
    let req: RequestJson<'_> = serde_json::from_slice(&body[..json_len])
        .map_err(|e| Error::invalid(format!("malformed JSON request: {e}")))?;
    let mut offset = 0usize;
    let has_binary = json_len < body.len();
    let inputs = req
        .inputs
        .into_iter()
        .map(|input| decode_input(input, &binary, has_binary, &mut offset))
        .collect::<Result<Vec<_>>>()?;
    if offset != binary.len() {
        return Err(Error::invalid(format!(
            "the body carries {} bytes after the JSON header but the inputs' \
             binary_data_size add up to {offset}",
            binary.len()
        )));
    }
    let parameters = req.parameters.unwrap_or_default();
    refuse_unsupported(&parameters, &"request")?;
    let mut format = OutputFormat {
        binary_default: bool_param(&parameters, "binary_data_output", &"request")?.unwrap_or(false),
        binary: Vec::new(),
    };
    let outputs = req
        .outputs
        .into_iter()
        .map(|o| decode_output(o, &mut format))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        InferRequest {
            id: req.id,
            model: model.to_string(),
            version,
            inputs,
            outputs,
            parameters,
            deadline: None,
            protocol: crate::core::request::Protocol::Http,
            ..Default::default()
        },
        format,
    ))
}

/// One input of a request: JSON `data`, or the next `binary_data_size`
/// bytes of the binary part (from `offset`, which it advances).
fn decode_input(
    input: InputJson<'_>,
    binary: &Bytes,
    has_binary: bool,
    offset: &mut usize,
) -> Result<Tensor> {
    let dtype = DataType::parse(&input.datatype).ok_or_else(|| {
        Error::invalid(format!(
            "input '{}': unknown datatype '{}'",
            input.name, input.datatype
        ))
    })?;
    let params = input.parameters.unwrap_or_default();
    let what = Named("input", &input.name);
    refuse_unsupported(&params, &what)?;
    let binary_size = match params.get("binary_data_size") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            Error::invalid(format!(
                "{what}: binary_data_size must be a non-negative integer, got {v}"
            ))
        })?),
    };
    let data = match (input.data, binary_size) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(format!(
                "{what}: has both 'data' and parameters.binary_data_size"
            )))
        }
        (None, None) => return Err(Error::invalid(format!("{what}: missing field 'data'"))),
        (Some(raw), None) => {
            let capacity = crate::core::tensor::element_count(&input.shape)
                .unwrap_or(0)
                .min(1 << 20)
                * dtype.size().unwrap_or(8);
            parse_data(&input.name, dtype, raw, capacity)?
        }
        (None, Some(size)) => {
            if !has_binary && size > 0 {
                return Err(Error::invalid(format!(
                    "{what}: binary_data_size is {size} but the request has no binary \
                     data (no Inference-Header-Content-Length header)"
                )));
            }
            let end = usize::try_from(size)
                .ok()
                .and_then(|s| offset.checked_add(s))
                .filter(|&end| end <= binary.len())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{what}: binary_data_size {size} runs past the end of the body \
                         ({} bytes of binary data, {offset} used by earlier inputs)",
                        binary.len()
                    ))
                })?;
            let data = binary.slice(*offset..end);
            *offset = end;
            data
        }
    };
    Tensor::new(input.name, dtype, input.shape, data)
}

/// One requested output; its `binary_data` choice goes into `format`.
fn decode_output(o: OutputJson, format: &mut OutputFormat) -> Result<RequestedOutput> {
    let params = o.parameters.unwrap_or_default();
    let what = Named("output", &o.name);
    refuse_unsupported(&params, &what)?;
    if let Some(b) = bool_param(&params, "binary_data", &what)? {
        format.binary.push((o.name.clone(), b));
    }
    Ok(RequestedOutput {
        name: o.name,
        parameters: params,
    })
}

/// An output tensor in the JSON response; a binary one names its size instead of its data.
struct TensorJson<'a> {
    tensor: &'a Tensor,
    binary: bool,
}

impl Serialize for TensorJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let t = self.tensor;
        let mut st = s.serialize_struct("Tensor", 4)?;
        st.serialize_field("name", &t.name)?;
        st.serialize_field("datatype", t.dtype.as_str())?;
        st.serialize_field("shape", &t.shape)?;
        if self.binary {
            st.serialize_field(
                "parameters",
                &serde_json::json!({ "binary_data_size": t.data.len() }),
            )?;
        } else {
            st.serialize_field("data", &DataJson(t))?;
        }
        st.end()
    }
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    parameters: &'a Parameters,
    outputs: Vec<TensorJson<'a>>,
}

/// Triton's binary tensor extension: the length of the JSON part of a body.
pub const INFERENCE_HEADER: &str = "inference-header-content-length";

/// `POST /v2/models/{m}[/versions/{v}]/infer` in the one pipeline: JSON or
/// Triton's binary extension, answered compressed when the client accepts it.
pub struct HttpCodec {
    /// The `Inference-Header-Content-Length` header, read when decoding.
    json_len: Option<http::HeaderValue>,
    accept: Option<super::compression::Encoding>,
}

impl HttpCodec {
    pub fn new(headers: &http::HeaderMap) -> Self {
        HttpCodec {
            json_len: headers.get(INFERENCE_HEADER).cloned(),
            accept: super::compression::accepted(headers),
        }
    }
}

impl super::pipeline::Codec for HttpCodec {
    type Input = Bytes;
    type Output = super::http::HttpResponse;
    type Shape = OutputFormat;
    const PROTOCOL: crate::core::request::Protocol = crate::core::request::Protocol::Http;
    const NEEDS_METADATA: bool = false;

    fn decode(
        &self,
        body: Bytes,
        call: &super::pipeline::Call<'_>,
        _: Option<&crate::core::metadata::ModelMetadata>,
    ) -> Result<(InferRequest, OutputFormat)> {
        let json_len = match &self.json_len {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "header {INFERENCE_HEADER} is not a byte count: {v:?}"
                        ))
                    })?,
            ),
        };
        decode_request(&body, json_len, call.model, call.version)
    }

    fn encode(&self, response: InferResponse, format: OutputFormat) -> Result<Self::Output> {
        let (body, json_len) = encode_response(&response, &format);
        let (body, encoding) = super::compression::compress(body, self.accept);
        let mut resp = match json_len {
            None => super::http::json_ok(body),
            Some(n) => {
                let mut r = super::http::binary(body);
                r.headers_mut()
                    .insert(INFERENCE_HEADER, http::HeaderValue::from(n));
                r
            }
        };
        if let Some(e) = encoding {
            resp.headers_mut().insert(http::header::CONTENT_ENCODING, e);
        }
        Ok(resp)
    }
}

/// Encodes an infer response: the JSON, then the raw bytes of the outputs that
/// `format` makes binary. Returns the body and, when some output is binary, the
/// length of the JSON part (for `Inference-Header-Content-Length`).
pub fn encode_response(resp: &InferResponse, format: &OutputFormat) -> (Vec<u8>, Option<usize>) {
    let outputs: Vec<TensorJson<'_>> = resp
        .outputs
        .iter()
        .map(|t| TensorJson {
            tensor: t,
            binary: format.is_binary(&t.name),
        })
        .collect();
    let body = ResponseJson {
        model_name: &resp.model,
        model_version: resp.version.to_string(),
        id: resp.id.as_deref(),
        parameters: &resp.parameters,
        outputs,
    };
    let mut out = serde_json::to_vec(&body).expect("serializing to memory cannot fail");
    if !body.outputs.iter().any(|o| o.binary) {
        return (out, None);
    }
    let json_len = out.len();
    for o in body.outputs.iter().filter(|o| o.binary) {
        out.extend_from_slice(&o.tensor.data);
    }
    (out, Some(json_len))
}

#[derive(Serialize)]
struct SpecJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
}

fn specs(v: &[TensorSpec]) -> Vec<SpecJson<'_>> {
    v.iter()
        .map(|s| SpecJson {
            name: &s.name,
            datatype: s.dtype.as_str(),
            shape: &s.shape,
        })
        .collect()
}

/// Model metadata (`GET /v2/models/{m}[/versions/{v}]`): the versions that serve,
/// and the inputs and outputs of the addressed (or default) version. A model that
/// cannot serve still answers, with `state` and `reason`, so its failure is visible.
pub fn encode_model_metadata(model: &Model, version: Option<u64>) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Unavailable {
        version: String,
        reason: String,
    }
    let (versions, meta): (Vec<String>, Option<&ModelMetadata>) = match version {
        Some(v) => match model.versions.get(&v) {
            Some(VersionState::Ready(mv)) => (vec![v.to_string()], Some(&mv.metadata)),
            Some(VersionState::Failed(_)) => (vec![v.to_string()], None),
            None => {
                return Err(Error::not_found(format!(
                    "model '{}' has no version {v}",
                    model.name
                )))
            }
        },
        None => (
            model
                .ready_versions()
                .map(|v| v.version.to_string())
                .collect(),
            model.default_version().map(|v| &v.metadata),
        ),
    };
    let unavailable: Vec<Unavailable> = model
        .versions
        .iter()
        .filter(|(v, _)| version.is_none_or(|want| want == **v))
        .filter_map(|(v, s)| match s {
            VersionState::Failed(r) => Some(Unavailable {
                version: v.to_string(),
                reason: r.to_string(),
            }),
            VersionState::Ready(_) => None,
        })
        .collect();
    let reason = match version {
        Some(v) => unavailable
            .iter()
            .find(|u| u.version == v.to_string())
            .map(|u| u.reason.clone()),
        None => model.unavailable_reason(),
    };
    let inputs = meta.map(|m| m.shown_inputs()).unwrap_or_default();
    let body = serde_json::json!({
        "name": &*model.name,
        "versions": versions,
        "platform": meta.map_or("", |m| m.platform),
        "inputs": specs(&inputs),
        "outputs": meta.map(|m| specs(&m.outputs)).unwrap_or_default(),
        "max_batch_size": meta.map_or(0, |m| m.max_batch_size),
        "state": if reason.is_none() { "READY" } else { "UNAVAILABLE" },
    });
    let mut body = body;
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    if !unavailable.is_empty() {
        body["unavailable_versions"] = serde_json::to_value(&unavailable).expect("plain data");
    }
    Ok(serde_json::to_vec(&body).expect("serializing to memory cannot fail"))
}

/// Triton's model configuration as JSON (`GET .../config`), which perf_analyzer
/// and tritonclient read; dims leave out the batch dim when `max_batch_size` > 0.
pub fn encode_model_config(c: &ServingConfig) -> Vec<u8> {
    let io = |v: &[ConfigTensor]| {
        v.iter()
            .map(|t| {
                let mut io = serde_json::json!({
                    "name": t.name,
                    "data_type": t.dtype.triton_config_name(),
                    "dims": t.dims,
                });
                if let Some(shape) = &t.reshape {
                    io["reshape"] = serde_json::json!({ "shape": shape });
                }
                io
            })
            .collect::<Vec<_>>()
    };
    let group = match c.gpu {
        Some(g) => {
            serde_json::json!({"name": format!("{}_0", c.name), "kind": "KIND_GPU", "count": c.instances, "gpus": [g]})
        }
        None => {
            serde_json::json!({"name": format!("{}_0", c.name), "kind": "KIND_CPU", "count": c.instances})
        }
    };
    let mut body = serde_json::json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "version_policy": match &c.version_policy {
            VersionPolicy::Latest(n) => serde_json::json!({"latest": {"num_versions": n}}),
            VersionPolicy::All => serde_json::json!({"all": {}}),
            VersionPolicy::Specific(v) => serde_json::json!({"specific": {"versions": v}}),
        },
        "max_batch_size": c.max_batch_size,
        "input": io(&c.inputs),
        "output": io(&c.outputs),
        "instance_group": [group],
    });
    if let Some((preferred, delay)) = &c.dynamic_batching {
        body["dynamic_batching"] = serde_json::json!({
            "preferred_batch_size": preferred,
            "max_queue_delay_microseconds": delay,
        });
    }
    serde_json::to_vec(&body).expect("plain data")
}

/// Triton's statistics extension as JSON (`GET .../stats`).
pub fn encode_stats(versions: &[std::sync::Arc<crate::serving::ModelVersion>]) -> Vec<u8> {
    use std::sync::atomic::Ordering::Relaxed;
    let tally = |t: &crate::serving::Tally| {
        let (count, ns) = t.get();
        serde_json::json!({"count": count, "ns": ns})
    };
    let stats: Vec<serde_json::Value> = versions
        .iter()
        .map(|mv| {
            let s = &mv.stats;
            // One read: Triton's clients require the three compute counts to agree.
            let (runs, infer_ns) = s.compute_infer.get();
            serde_json::json!({
                "name": &*mv.model,
                "version": mv.version.to_string(),
                "last_inference": s.last_inference_ms.load(Relaxed),
                "inference_count": s.inference_count.load(Relaxed),
                "execution_count": s.execution_count.load(Relaxed),
                "inference_stats": {
                    "success": tally(&s.success),
                    "fail": tally(&s.fail),
                    "queue": tally(&s.queue),
                    "compute_input": {"count": runs, "ns": 0},
                    "compute_infer": {"count": runs, "ns": infer_ns},
                    "compute_output": {"count": runs, "ns": 0},
                },
                "batch_stats": s.batch_sizes().map(|(size, count, ns)| serde_json::json!({
                    "batch_size": size,
                    "compute_input": {"count": count, "ns": 0},
                    "compute_infer": {"count": count, "ns": ns},
                    "compute_output": {"count": count, "ns": 0},
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "model_stats": stats })).expect("plain data")
}

/// The repository index as Triton's HTTP API gives it.
pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let v: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let mut o = serde_json::json!({
                "name": e.name,
                "state": if e.ready { "READY" } else { "UNAVAILABLE" },
            });
            if let Some(v) = e.version {
                o["version"] = v.to_string().into();
            }
            if !e.reason.is_empty() {
                o["reason"] = e.reason.clone().into();
            }
            o
        })
        .collect();
    serde_json::to_vec(&v).expect("plain data")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::ErrorStatus;

    fn one(dtype: &str, data: &str) -> Result<Tensor> {
        let body = format!(
            r#"{{"inputs":[{{"name":"x","shape":[-2],"datatype":"{dtype}","data":{data}}}]}}"#
        );
        let body = body.replace("[-2]", "[3]");
        decode(body.as_bytes()).map(|mut r| r.inputs.remove(0))
    }

    fn decode(body: &[u8]) -> Result<InferRequest> {
        decode_request(&Bytes::copy_from_slice(body), None, "m", None).map(|(r, _)| r)
    }

    #[test]
    fn nested_and_flat_data_decode_alike() {
        let flat = decode(
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[1,2,3,4]}]}"#,
        )
        .unwrap();
        let nested = decode(
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[[1,2],[3,4]]}]}"#,
        )
        .unwrap();
        assert_eq!(flat.inputs, nested.inputs);
    }

    #[test]
    fn values_are_checked_against_the_datatype() {
        assert!(one("UINT8", "[0,255,3]").is_ok());
        let e = one("UINT8", "[0,256,3]").unwrap_err().to_string();
        assert!(e.contains("256 is not a valid UINT8"), "{e}");
        let e = one("INT32", "[1,2.5,3]").unwrap_err().to_string();
        assert!(e.contains("2.5"), "{e}");
        let e = one("BOOL", "[true,1,false]").unwrap_err().to_string();
        assert!(e.contains("BOOL"), "{e}");
        let e = one("BYTES", r#"["a",1,"c"]"#).unwrap_err().to_string();
        assert!(e.contains("not a string"), "{e}");
        let e = one("FP16", "[1,70000,3]").unwrap_err().to_string();
        assert!(e.contains("range of FP16"), "{e}");
        let e = one("FP32", "[1,2]").unwrap_err().to_string();
        assert!(e.contains("needs 3 elements"), "{e}");
        let e = one("FP9", "[1,2,3]").unwrap_err().to_string();
        assert!(e.contains("unknown datatype 'FP9'"), "{e}");
    }

    #[test]
    fn integers_stay_exact_and_floats_round_trip() {
        let t = one(
            "INT64",
            "[9223372036854775807,-9223372036854775808,9007199254740993]",
        )
        .unwrap();
        let u = one("UINT64", "[18446744073709551615,0,1]").unwrap();
        let f = one("FP32", "[0.1,3.4028235e38,-1e-45]").unwrap();
        let d = one("FP64", "[0.1,1.7976931348623157e308,5e-324]").unwrap();
        let resp = InferResponse {
            id: Some("r1".into()),
            model: "m".into(),
            version: 1,
            outputs: vec![t, u, f, d],
            parameters: Default::default(),
        };
        let (body, json_len) = encode_response(&resp, &OutputFormat::default());
        assert_eq!(json_len, None);
        let s = String::from_utf8(body).unwrap();
        assert!(
            s.contains("[9223372036854775807,-9223372036854775808,9007199254740993]"),
            "{s}"
        );
        assert!(s.contains("[18446744073709551615,0,1]"), "{s}");
        assert!(s.contains("[0.1,3.4028235e+38,-1e-45]"), "{s}");
        assert!(s.contains("[0.1,1.7976931348623157e+308,5e-324]"), "{s}");
        assert!(
            s.contains(r#""id":"r1""#) && s.contains(r#""model_version":"1""#),
            "{s}"
        );
    }

    #[test]
    fn malformed_json_is_an_invalid_input_naming_the_place() {
        let e = decode(b"{\"inputs\": [").unwrap_err();
        assert_eq!(e.http_status(), http::StatusCode::BAD_REQUEST);
        let e = decode(br#"{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `shape`"), "{e}");
    }
}
