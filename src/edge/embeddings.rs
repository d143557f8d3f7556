//! The embedding APIs that text-encoder users already call: OpenAI's
//! `POST /v1/embeddings` (the `openai` clients, LangChain, LlamaIndex) and
//! TEI's `POST /embed`. Both are texts in, vectors out, for a model with one
//! BYTES input (an `architecture = "bert"` encoder).

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::pipeline::{Call, Codec};
use crate::core::error::{Error, Result};
use crate::core::metadata::ModelMetadata;
use crate::core::request::{InferRequest, InferResponse, Protocol, RequestedOutput};
use crate::core::tensor::{encode_bytes_elements, DataType, Tensor};
use crate::runtime::bert::TOKENS_OUTPUT;

/// One text or a list of them. OpenAI's token-id arrays are refused by name:
/// the model's own tokenizer reads the text.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
    Tokens(Value),
}

impl Texts {
    fn into_vec(self, field: &str) -> Result<Vec<String>> {
        match self {
            Texts::One(s) => Ok(vec![s]),
            Texts::Many(v) if !v.is_empty() => Ok(v),
            Texts::Many(_) => Err(Error::invalid(format!("'{field}' is an empty list"))),
            Texts::Tokens(_) => Err(Error::invalid(format!(
                "'{field}' must be a string or a list of strings (token ids are not taken: \
                 the model tokenizes the text itself)"
            ))),
        }
    }
}

/// The texts as a request to an encoder: its one BYTES input, the embedding
/// and the token counts asked for.
fn texts_request(
    texts: Vec<String>,
    meta: &ModelMetadata,
    call: &Call<'_>,
) -> Result<(InferRequest, String)> {
    let not_encoder = || {
        Error::invalid(format!(
            "model '{}' is not a text encoder (one BYTES input, one FP32 embedding output); \
             embeddings are served for architecture = \"bert\" models",
            call.model
        ))
    };
    let [input] = meta.inputs.as_slice() else {
        return Err(not_encoder());
    };
    let embedding = meta
        .outputs
        .iter()
        .find(|o| o.dtype == DataType::F32 && o.shape.len() == 2)
        .ok_or_else(not_encoder)?;
    if input.dtype != DataType::Bytes || !meta.outputs.iter().any(|o| o.name == TOKENS_OUTPUT) {
        return Err(not_encoder());
    }
    let n = texts.len() as i64;
    let data = encode_bytes_elements(texts.iter().map(|s| s.as_bytes()));
    let tensor = Tensor::new(input.name.clone(), DataType::Bytes, vec![n], data)?;
    let mut request = InferRequest::of_inputs(call.model, call.version, vec![tensor])?;
    request.outputs = [embedding.name.as_str(), TOKENS_OUTPUT]
        .into_iter()
        .map(|name| RequestedOutput {
            name: name.into(),
            ..Default::default()
        })
        .collect();
    Ok((request, embedding.name.clone()))
}

/// The embeddings (one row each) and the total tokens of an encoder's answer.
fn vectors(response: &InferResponse, embedding: &str) -> Result<(Vec<Vec<f32>>, i64)> {
    let output = |name: &str| {
        response
            .outputs
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::Internal(format!("the encoder gave no output '{name}'")))
    };
    let e = output(embedding)?;
    let width = e.shape.get(1).copied().unwrap_or(0).max(1) as usize;
    let floats: Vec<f32> = e
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let tokens: i64 = output(TOKENS_OUTPUT)?
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .sum();
    Ok((floats.chunks(width).map(<[f32]>::to_vec).collect(), tokens))
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::invalid(format!("not {what}: {e}")))
}

/// OpenAI's embeddings request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiRequest {
    input: Texts,
    /// The model's name: where the request goes.
    pub model: String,
    #[serde(default)]
    encoding_format: Option<String>,
    /// Only the model's own width is served (no Matryoshka truncation).
    #[serde(default)]
    dimensions: Option<u64>,
    /// An end-user id, for the caller's abuse monitoring; not used.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

impl OpenAiRequest {
    /// Parses a body; the router reads `model` from it before the pipeline runs.
    pub fn parse(body: &[u8]) -> Result<Self> {
        parse(
            body,
            "an embeddings request ({\"input\": ..., \"model\": ...})",
        )
    }
}

/// `POST /v1/embeddings`.
pub struct OpenAi;

/// What an OpenAI answer needs of its request.
pub struct OpenAiShape {
    base64: bool,
    embedding: String,
}

impl Codec for OpenAi {
    type Input = OpenAiRequest;
    type Output = super::http::HttpResponse;
    type Shape = OpenAiShape;
    const PROTOCOL: Protocol = Protocol::Http;
    const NEEDS_METADATA: bool = true;

    fn decode(
        &self,
        req: OpenAiRequest,
        call: &Call<'_>,
        meta: Option<&ModelMetadata>,
    ) -> Result<(InferRequest, OpenAiShape)> {
        let meta = super::pipeline::given(meta)?;
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "encoding_format '{other}' is not 'float' or 'base64'"
                )))
            }
        };
        let (request, embedding) = texts_request(req.input.into_vec("input")?, meta, call)?;
        let width = meta
            .outputs
            .iter()
            .find(|o| o.name == embedding)
            .map_or(-1, |o| o.shape[1]);
        if let Some(want) = req.dimensions.filter(|&d| d as i64 != width) {
            return Err(Error::invalid(format!(
                "dimensions is {want}, but model '{}' gives {width} (leave dimensions out)",
                call.model
            )));
        }
        Ok((request, OpenAiShape { base64, embedding }))
    }

    fn encode(&self, response: InferResponse, shape: OpenAiShape) -> Result<Self::Output> {
        let (rows, tokens) = vectors(&response, &shape.embedding)?;
        let data: Vec<Value> = rows
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let embedding = if shape.base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let body = json!({
            "object": "list",
            "data": data,
            "model": &*response.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        });
        Ok(super::http::json_ok(
            serde_json::to_vec(&body).expect("plain data"),
        ))
    }
}

/// An error as OpenAI's API answers one, which its clients read the message
/// of: `{"error": {"message", "type", "param", "code"}}`, with the status.
pub fn openai_error(e: &Error) -> super::http::HttpResponse {
    use super::status::ErrorStatus;
    let status = e.http_status();
    let (kind, code) = match e {
        Error::NotFound(_) => ("invalid_request_error", Some("model_not_found")),
        Error::Unauthenticated(_) => ("invalid_request_error", Some("invalid_api_key")),
        _ if status.is_client_error() => ("invalid_request_error", None),
        _ => ("server_error", None),
    };
    let body =
        json!({"error": {"message": e.to_string(), "type": kind, "param": null, "code": code}});
    super::http::json(status, serde_json::to_vec(&body).expect("plain data"))
}

/// TEI's `/embed` request. `normalize` and `truncate` are the model's
/// configuration here (`[encoder]` in config.toml), so a request may not ask.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeiRequest {
    inputs: Texts,
    #[serde(default)]
    normalize: Option<Value>,
    #[serde(default)]
    truncate: Option<Value>,
}

/// `POST /embed`: a list of vectors, one per text.
pub struct Tei;

impl Codec for Tei {
    type Input = Bytes;
    type Output = super::http::HttpResponse;
    /// The embedding output's name.
    type Shape = String;
    const PROTOCOL: Protocol = Protocol::Http;
    const NEEDS_METADATA: bool = true;

    fn decode(
        &self,
        body: Bytes,
        call: &Call<'_>,
        meta: Option<&ModelMetadata>,
    ) -> Result<(InferRequest, String)> {
        let meta = super::pipeline::given(meta)?;
        let req: TeiRequest = parse(&body, "an embed request ({\"inputs\": ...})")?;
        for (key, given) in [("normalize", &req.normalize), ("truncate", &req.truncate)] {
            if given.is_some() {
                return Err(Error::invalid(format!(
                    "'{key}' is set by the model's configuration ([encoder] {key} in its \
                     config.toml); leave it out of the request"
                )));
            }
        }
        texts_request(req.inputs.into_vec("inputs")?, meta, call)
    }

    fn encode(&self, response: InferResponse, embedding: String) -> Result<Self::Output> {
        let (rows, _) = vectors(&response, &embedding)?;
        Ok(super::http::json_ok(
            serde_json::to_vec(&rows).expect("plain data"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_one_string_or_a_list_of_them() {
        let t = |v: Value| {
            serde_json::from_value::<Texts>(v)
                .unwrap()
                .into_vec("input")
        };
        assert_eq!(t(json!("a")).unwrap(), ["a"]);
        assert_eq!(t(json!(["a", "b"])).unwrap(), ["a", "b"]);
        assert!(t(json!([])).unwrap_err().to_string().contains("empty"));
        assert!(t(json!([1, 2]))
            .unwrap_err()
            .to_string()
            .contains("token ids"));
        assert!(t(json!(7)).is_err());
    }
}
