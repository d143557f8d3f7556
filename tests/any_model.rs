//! Models whose outputs follow their input values, or whose dynamic first dims
//! are not a batch dim, serve as ONNX Runtime runs them (`tests/fixtures/
//! make_shape_models.py`): warm-up never takes them out of service, and what a
//! client sends to them can be refused (4xx) but never crash, hang or blow up
//! the server.

mod common;

use common::{client, repo_root, scratch, Server};
use serde_json::{json, Value};

fn repo(name: &str) -> std::path::PathBuf {
    let repo = scratch(name);
    for m in ["topk", "range", "matmul", "square"] {
        let dir = repo.join(m).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            repo_root()
                .join("tests/fixtures")
                .join(m)
                .join("model.onnx"),
            dir.join("model.onnx"),
        )
        .unwrap();
    }
    repo
}

fn input(name: &str, dtype: &str, shape: &[i64], data: Value) -> Value {
    json!({"name": name, "datatype": dtype, "shape": shape, "data": data})
}

fn output<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {resp}"))
}

#[test]
fn models_of_shape_inputs_serve_and_answer() {
    let s = Server::start(&repo("any-model"), &[]);
    for m in ["topk", "range", "matmul", "square"] {
        let (code, r) = s.get(&format!("/v2/models/{m}/ready"));
        assert_eq!(code, 200, "{m} not ready: {r}\n{}", s.logs());
    }
    let logs = s.logs();
    assert!(
        logs.contains("input 'k'") && logs.contains("looks like a shape"),
        "topk's k is not guessed: {logs}"
    );
    assert!(
        logs.contains("the runtime refused it"),
        "range's generated request (delta 0) is refused and the model serves: {logs}"
    );

    // TopK with k = 2.
    let (code, r) = s.post(
        "/v2/models/topk/infer",
        &json!({"inputs": [
            input("x", "FP32", &[1, 5], json!([1, 5, 3, 2, 4])),
            input("k", "INT64", &[1], json!([2])),
        ]}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(output(&r, "values")["data"], json!([5.0, 4.0]));
    assert_eq!(output(&r, "indices")["data"], json!([1, 4]));

    // Range: a value ONNX Runtime refuses is the client's 400, naming why.
    let range = |delta: f32| {
        s.post(
            "/v2/models/range/infer",
            &json!({"inputs": [
                input("start", "FP32", &[], json!([0])),
                input("limit", "FP32", &[], json!([5])),
                input("delta", "FP32", &[], json!([delta])),
            ]}),
        )
    };
    let (code, r) = range(2.0);
    assert_eq!(code, 200, "{r}");
    assert_eq!(output(&r, "y")["data"], json!([0.0, 2.0, 4.0]));
    let (code, r) = range(0.0);
    assert_eq!(code, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("delta"), "{r}");

    // MatMul(a[M,K], b[K,N]): no batch dim, and a 3x4 by 4x5 product is valid.
    let (_, cfg) = s.get("/v2/models/matmul/config");
    assert_eq!(cfg["max_batch_size"], 0, "{cfg}");
    let ones = |n: usize| json!(vec![1.0; n]);
    let (code, r) = s.post(
        "/v2/models/matmul/infer",
        &json!({"inputs": [
            input("a", "FP32", &[3, 4], ones(12)),
            input("b", "FP32", &[4, 5], ones(20)),
        ]}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(output(&r, "y")["shape"], json!([3, 5]));
    assert_eq!(output(&r, "y")["data"], json!(vec![4.0; 15]));
}

#[test]
fn hostile_bodies_get_a_4xx_and_the_server_keeps_serving() {
    let s = Server::start(&repo("any-model-hostile"), &[]);
    let square = |body: Vec<u8>, path: &str| s.post_raw(path, body);
    // A one-column DataFrame row with no cell (once a panic).
    let (code, r) = square(
        br#"{"dataframe_split": {"columns": ["x"], "data": [[]]}}"#.to_vec(),
        "/models/square/invocations",
    );
    assert_eq!(code, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("1 columns"), "{r}");
    // 20k records of invented keys in a few hundred KB: one 400, at once.
    let mut body = String::from(r#"{"dataframe_records": ["#);
    for i in 0..20_000 {
        body.push_str(&format!(r#"{{"c{i}": {i}}},"#));
    }
    body.push_str(r#"{"x": 1}]}"#);
    let (code, r) = square(body.into_bytes(), "/models/square/invocations");
    assert_eq!(code, 400, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("'c1'"),
        "the first key unlike the first record's is named: {r}"
    );
    let (code, r) = square(
        br#"{"instances": [{"x": 1, "y": 2}]}"#.to_vec(),
        "/v1/models/square:predict",
    );
    assert_eq!(code, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("'y'"), "{r}");
    // An empty tensor with a huge dim, and a timeout past what a clock holds.
    let (code, r) = s.post(
        "/v2/models/square/infer",
        &json!({"inputs": [input("x", "FP32", &[0, 4_611_686_018_427_387_904], json!([]))]}),
    );
    assert_eq!(code, 400, "{r}");
    let (code, r) = s.post(
        "/v2/models/square/infer",
        &json!({"parameters": {"timeout": u64::MAX},
                "inputs": [input("x", "FP32", &[2], json!([1.5, 2]))]}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(output(&r, "y")["data"], json!([2.25, 4.0]));
    // Still serving, and the records above came back as a DataFrame answer.
    let r = client()
        .post(s.url("/models/square/invocations"))
        .header("content-type", "application/json")
        .body(r#"{"dataframe_records": [{"x": 3}, {"x": 4}]}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v, json!({"predictions": [{"y": 9.0}, {"y": 16.0}]}));
}
