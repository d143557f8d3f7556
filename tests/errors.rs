//! Every client mistake is a 4xx naming the problem, and the server stays healthy after each.

mod common;

use common::{client, sample_models, Server};
use serde_json::{json, Value};

fn iris(data: Value, shape: Value, dtype: &str) -> Value {
    json!({"inputs": [{"name": "input", "datatype": dtype, "shape": shape, "data": data}]})
}

#[test]
fn client_mistakes_are_4xx_with_a_reason() {
    let s = Server::start(&sample_models(), &[]);
    let row = json!([[5.1, 3.5, 1.4, 0.2]]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v2/models/iris/infer",
            b"{\"inputs\": [".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "/v2/models/iris/infer",
            b"not json".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "/v2/models/iris/infer",
            b"{}".to_vec(),
            400,
            "missing field `inputs`",
        ),
        (
            "/v2/models/iris/infer",
            iris(row.clone(), json!([1, 4]), "FP64")
                .to_string()
                .into_bytes(),
            400,
            "datatype FP64 does not match the model's FP32",
        ),
        (
            "/v2/models/iris/infer",
            iris(row.clone(), json!([1, 5]), "FP32")
                .to_string()
                .into_bytes(),
            400,
            "needs 5 elements",
        ),
        (
            "/v2/models/iris/infer",
            iris(json!([1, 2, 3, 4, 5]), json!([1, 5]), "FP32")
                .to_string()
                .into_bytes(),
            400,
            "shape [1, 5] does not match the model's [-1, 4]",
        ),
        (
            "/v2/models/iris/infer",
            iris(row.clone(), json!([4]), "FP32")
                .to_string()
                .into_bytes(),
            400,
            "shape [4] does not match",
        ),
        (
            "/v2/models/iris/infer",
            iris(json!(["a", "b", "c", "d"]), json!([1, 4]), "FP32")
                .to_string()
                .into_bytes(),
            400,
            "not a valid FP32",
        ),
        (
            "/v2/models/iris/infer",
            iris(row.clone(), json!([1, 4]), "FLOAT")
                .to_string()
                .into_bytes(),
            400,
            "unknown datatype 'FLOAT'",
        ),
        (
            "/v2/models/iris/infer",
            iris(row.clone(), json!([1, -4]), "FP32")
                .to_string()
                .into_bytes(),
            400,
            "negative dimension",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": []}).to_string().into_bytes(),
            400,
            "missing input 'input'",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}]})
                .to_string()
                .into_bytes(),
            400,
            "missing field 'data'",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row},
            {"name": "extra", "datatype": "FP32", "shape": [1], "data": [1]}]})
            .to_string()
            .into_bytes(),
            400,
            "unknown input 'extra'",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row},
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row}]})
            .to_string()
            .into_bytes(),
            400,
            "given twice",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row}],
            "outputs": [{"name": "label"}, {"name": "logits"}]})
            .to_string()
            .into_bytes(),
            400,
            "unknown output 'logits'",
        ),
        (
            "/v2/models/iris/infer",
            iris(json!(vec![0.0; 65 * 4]), json!([65, 4]), "FP32")
                .to_string()
                .into_bytes(),
            400,
            "max_batch_size of 64",
        ),
        (
            "/v2/models/mixed/infer",
            json!({"inputs": [
            {"name": "features", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
            {"name": "counts", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
            {"name": "scale", "datatype": "FP64", "shape": [], "data": [1]},
            {"name": "tag", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]})
            .to_string()
            .into_bytes(),
            400,
            "'n'",
        ),
        (
            "/v2/models/nope/infer",
            iris(row.clone(), json!([1, 4]), "FP32")
                .to_string()
                .into_bytes(),
            404,
            "unknown model 'nope'",
        ),
        (
            "/v2/models/iris/versions/7/infer",
            iris(row.clone(), json!([1, 4]), "FP32")
                .to_string()
                .into_bytes(),
            404,
            "has no version 7",
        ),
        (
            "/v2/models/iris/versions/latest/infer",
            iris(row.clone(), json!([1, 4]), "FP32")
                .to_string()
                .into_bytes(),
            404,
            "no version 'latest'",
        ),
        (
            "/v2/models/iris/versions/0/infer",
            iris(row.clone(), json!([1, 4]), "FP32")
                .to_string()
                .into_bytes(),
            404,
            "no version '0'",
        ),
        ("/v3/models/iris/infer", b"{}".to_vec(), 404, "no such path"),
        ("/v2/health/live", b"".to_vec(), 405, "not allowed"),
    ];
    for (path, body, status, needle) in cases {
        let (code, resp) = s.post_raw(path, body);
        let msg = resp["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(code, status, "{path}: {resp}");
        assert!(
            msg.contains(needle),
            "{path}: {msg:?} should contain {needle:?}"
        );
    }
    let r = client().get(s.url("/v2/models/iris/infer")).send().unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(s.get("/v2/models/nope").0, 404);
    assert_eq!(s.get("/v2/models/iris/versions/2").0, 404);

    // Still healthy, and still right.
    assert_eq!(s.get("/v2/health/ready").0, 200);
    let (code, resp) = s.post(
        "/v2/models/iris/infer",
        &iris(json!([[5.1, 3.5, 1.4, 0.2]]), json!([1, 4]), "FP32"),
    );
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["outputs"][0]["data"], json!([0]));
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}

#[test]
fn bodies_over_the_limit_are_413() {
    let s = Server::start(&sample_models(), &["--max-body-bytes", "2048"]);
    let big = iris(json!(vec![1.25; 200 * 4]), json!([200, 4]), "FP32").to_string();
    assert!(big.len() > 2048);
    let (code, resp) = s.post_raw("/v2/models/iris/infer", big.into_bytes());
    assert_eq!(code, 413, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("2048"));
    // Chunked, with no Content-Length: the limit holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let r = client()
        .post(s.url("/v2/models/iris/infer"))
        .body(reqwest::blocking::Body::new(ChunkReader(
            chunks.into_iter(),
        )))
        .send();
    // The server answers as soon as the limit is crossed and closes the connection,
    // so the client sees the 413 or, if it was still writing, a reset: never a 2xx.
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    let (code, _) = s.post(
        "/v2/models/iris/infer",
        &iris(json!([[5.1, 3.5, 1.4, 0.2]]), json!([1, 4]), "FP32"),
    );
    assert_eq!(code, 200);
}

/// A reader with no known length, so the client sends a chunked body.
struct ChunkReader<I>(I);

impl<I: Iterator<Item = Result<Vec<u8>, std::io::Error>>> std::io::Read for ChunkReader<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.next() {
            Some(Ok(c)) => {
                let n = c.len().min(buf.len());
                buf[..n].copy_from_slice(&c[..n]);
                Ok(n)
            }
            Some(Err(e)) => Err(e),
            None => Ok(0),
        }
    }
}
