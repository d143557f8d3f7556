//! Every protocol goes through the one inference pipeline: the same call over
//! V2 JSON, V2 binary, gRPC, KServe V1 and MLflow is refused without the API
//! token alike, answers alike, misses a `grpc-timeout` deadline alike, and is
//! counted alike in the metrics when its body is malformed.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{client, sample_models, Server};
use serde_json::json;
use switchyard::edge::grpc::proto as pb;

const ROW: [f32; 16] = [0.25; 16];

/// An HTTP call of one encoding: path, extra headers, body.
struct HttpCall {
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn http_calls(malformed: bool) -> BTreeMap<&'static str, HttpCall> {
    let v2 =
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": ROW}]});
    let json_part =
        br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":64}}]}"#;
    let mut binary = json_part.to_vec();
    for x in ROW {
        binary.extend_from_slice(&x.to_le_bytes());
    }
    let bad = b"{\"inputs\": [".to_vec();
    let pick = |good: Vec<u8>| if malformed { bad.clone() } else { good };
    BTreeMap::from([
        (
            "v2 json",
            HttpCall {
                path: "/v2/models/mlp/infer",
                headers: vec![],
                body: pick(serde_json::to_vec(&v2).unwrap()),
            },
        ),
        (
            "v2 binary",
            HttpCall {
                path: "/v2/models/mlp/infer",
                headers: vec![(
                    "inference-header-content-length",
                    json_part.len().to_string(),
                )],
                body: pick(binary),
            },
        ),
        (
            "v1",
            HttpCall {
                path: "/v1/models/mlp:predict",
                headers: vec![],
                body: pick(serde_json::to_vec(&json!({ "instances": [ROW] })).unwrap()),
            },
        ),
        (
            "mlflow",
            HttpCall {
                path: "/models/mlp/invocations",
                headers: vec![("content-type", "application/json".into())],
                body: pick(serde_json::to_vec(&json!({ "instances": [ROW] })).unwrap()),
            },
        ),
    ])
}

/// Status of each HTTP encoding's call with `extra` headers.
fn http_statuses(s: &Server, malformed: bool, extra: &[(&str, &str)]) -> Vec<(String, u16)> {
    http_calls(malformed)
        .into_iter()
        .map(|(name, c)| {
            let mut r = client().post(s.url(c.path)).body(c.body);
            for (k, v) in c
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .chain(extra.iter().copied())
            {
                r = r.header(k, v);
            }
            let resp = r.send().unwrap();
            (name.to_string(), resp.status().as_u16())
        })
        .collect()
}

fn grpc_request(malformed: bool) -> pb::ModelInferRequest {
    let data: Vec<u8> = ROW.iter().flat_map(|x| x.to_le_bytes()).collect();
    pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            ..Default::default()
        }],
        // Malformed: the raw contents miss the 16 floats.
        raw_input_contents: vec![Bytes::from(if malformed { vec![0u8; 3] } else { data })],
        ..Default::default()
    }
}

/// The gRPC status code of one ModelInfer with `extra` metadata, sent with
/// no client-side deadline so that the server's handling shows.
fn grpc_code(s: &Server, malformed: bool, extra: &[(&str, &str)]) -> tonic::Code {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, message) = rt.block_on(common::grpc_raw_call(
        &s.grpc,
        &grpc_request(malformed),
        extra,
    ));
    let code = tonic::Code::from_i32(status.parse().unwrap_or_else(|_| panic!("{message}")));
    code
}

fn counted(text: &str, protocol: &str, code: u16) -> f64 {
    let series = format!(
        r#"switchyard_requests_total{{model="mlp",version="2",protocol="{protocol}",code="{code}"}}"#
    );
    common::metric_sample(text, &series).unwrap_or(0.0)
}

#[test]
fn every_encoding_takes_the_same_path() {
    let s = Server::start(&sample_models(), &["--api-token", "tok"]);
    let auth = ("authorization", "Bearer tok");
    let every = |statuses: Vec<(String, u16)>, want: u16| {
        for (name, got) in statuses {
            assert_eq!(got, want, "{name}");
        }
    };

    // Auth: no token, refused before anything else (a bad version, a missing
    // default model, a body to read).
    every(http_statuses(&s, false, &[]), 401);
    assert_eq!(grpc_code(&s, false, &[]), tonic::Code::Unauthenticated);
    for path in [
        "/v2/models/mlp/versions/x/infer",
        "/invocations",
        "/embed",
        "/v1/embeddings",
    ] {
        let code = client()
            .post(s.url(path))
            .body("{")
            .send()
            .unwrap()
            .status();
        assert_eq!(code, 401, "{path}");
    }

    // Answered.
    every(http_statuses(&s, false, &[auth]), 200);
    assert_eq!(grpc_code(&s, false, &[auth]), tonic::Code::Ok);

    // A deadline already past: `grpc-timeout`, as metadata or an HTTP header.
    every(
        http_statuses(&s, false, &[auth, ("grpc-timeout", "1n")]),
        504,
    );
    assert_eq!(
        grpc_code(&s, false, &[auth, ("grpc-timeout", "1n")]),
        tonic::Code::DeadlineExceeded
    );
    every(
        http_statuses(&s, false, &[auth, ("grpc-timeout", "soon")]),
        400,
    );

    // Malformed bodies: a 400 each, counted against the version they were for.
    every(http_statuses(&s, true, &[auth]), 400);
    assert_eq!(grpc_code(&s, true, &[auth]), tonic::Code::InvalidArgument);

    let text = s.metrics_text();
    let http = http_calls(false).len() as f64;
    assert_eq!(counted(&text, "http", 200), http, "{text}");
    assert_eq!(counted(&text, "grpc", 200), 1.0);
    assert_eq!(counted(&text, "http", 504), http);
    assert_eq!(counted(&text, "grpc", 504), 1.0);
    assert_eq!(counted(&text, "http", 400), http);
    assert_eq!(counted(&text, "grpc", 400), 1.0);
}
