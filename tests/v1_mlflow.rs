//! KServe V1 (`:predict`) and MLflow scoring (`/invocations`) on the sample models.

mod common;

use common::{client, sample_models, Server};
use serde_json::{json, Value};

const ROWS: [[f64; 4]; 2] = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]];

/// One value for each input of the `identity` model.
fn identity_row() -> Value {
    json!({"x_bool": true, "x_uint8": 1, "x_uint16": 2, "x_uint32": 3, "x_uint64": 4, "x_int8": -5,
           "x_int16": 6, "x_int32": 7, "x_int64": -8, "x_fp16": 0.5, "x_fp32": 0.1, "x_fp64": 0.2,
           "x_bf16": 1.5, "x_bytes": "z"})
}

#[test]
fn kserve_v1_rows_and_columns() {
    let s = Server::start(&sample_models(), &[]);
    let (code, list) = s.get("/v1/models");
    assert_eq!(code, 200);
    assert_eq!(
        list["models"],
        json!([
            "identity",
            "iris",
            "minilm",
            "mixed",
            "mlp",
            "mlp_safetensors"
        ])
    );
    assert_eq!(
        s.get("/v1/models/iris").1,
        json!({"name": "iris", "ready": true})
    );
    assert_eq!(s.get("/v1/models/nope").0, 404);

    let (code, p) = s.post("/v1/models/iris:predict", &json!({ "instances": ROWS }));
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["predictions"][0]["label"], 0);
    assert_eq!(p["predictions"][1]["label"], 2);
    assert_eq!(
        p["predictions"][1]["probabilities"],
        json!([0.0, 0.120000005, 0.88000005])
    );

    let (_, c) = s.post("/v1/models/iris:predict", &json!({ "inputs": ROWS }));
    assert_eq!(c["outputs"]["label"], json!([0, 2]));

    // Several inputs: one object per instance; a single-output model answers rows.
    let (code, m) = s.post(
        "/v1/models/identity:predict",
        &json!({ "instances": [identity_row()] }),
    );
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["predictions"][0]["y_int8"], -5);
    assert_eq!(m["predictions"][0]["y_fp32"], 0.1);
    assert_eq!(m["predictions"][0]["y_bytes"], "z");

    for (body, needle) in [
        (json!({}), "neither 'instances' nor 'inputs'"),
        (json!({"instances": ROWS, "inputs": ROWS}), "not both"),
        (
            json!({"instances": [[1, 2, 3, 4], [1, 2]]}),
            "different lengths",
        ),
        (
            json!({"instances": [["a", "b", "c", "d"]]}),
            "not a valid FP32",
        ),
        (json!({"instances": [{"x_bool": true}]}), "has no 'x_uint8'"),
    ] {
        let model = if body.to_string().contains("x_bool") {
            "identity"
        } else {
            "iris"
        };
        let (code, e) = s.post(&format!("/v1/models/{model}:predict"), &body);
        assert_eq!(code, 400, "{body}: {e}");
        assert!(
            e["error"].as_str().unwrap().contains(needle),
            "{e} should contain {needle}"
        );
    }
}

#[test]
fn mlflow_scoring_formats() {
    let s = Server::start(&sample_models(), &["--default-model", "iris"]);
    for path in ["/ping", "/health"] {
        assert_eq!(client().get(s.url(path)).send().unwrap().status(), 200);
    }
    let split = json!({"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": ROWS}});
    // iris has two outputs of different lengths: MLflow's DataFrame answer cannot hold them.
    let (code, e) = s.post("/invocations", &split);
    assert_eq!(code, 400);
    assert!(e["error"].as_str().unwrap().contains("instances"), "{e}");

    let (code, p) = s.post("/invocations", &json!({ "instances": ROWS }));
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["predictions"]["label"], json!([0, 2]));
    let (_, p) = s.post("/models/iris/invocations", &json!({ "inputs": ROWS }));
    assert_eq!(p["predictions"]["label"], json!([0, 2]));

    // mlp: one output, flattened to one column of records as MLflow does.
    let row: Vec<f64> = (0..16).map(|i| i as f64 / 10.0).collect();
    let cols: Vec<String> = (0..16).map(|i| format!("f{i}")).collect();
    let (code, split) = s.post(
        "/models/mlp/invocations",
        &json!({"dataframe_split": {"columns": cols, "data": [row.clone()]}}),
    );
    assert_eq!(code, 200, "{split}");
    let records: serde_json::Map<String, Value> = cols
        .iter()
        .cloned()
        .zip(row.iter().map(|v| json!(v)))
        .collect();
    let (_, rec) = s.post(
        "/models/mlp/invocations",
        &json!({ "dataframe_records": [records] }),
    );
    assert_eq!(split, rec);
    assert_eq!(split["predictions"].as_array().unwrap().len(), 4);
    assert!(split["predictions"][0]["output"].is_number());
    let csv = format!(
        "{}\n{}\n",
        cols.join(","),
        row.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = client()
        .post(s.url("/models/mlp/invocations"))
        .header("Content-Type", "text/csv")
        .body(csv)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap(), split);

    // Several inputs take their columns by name.
    let (code, mixed) = s.post(
        "/models/identity/invocations",
        &json!({ "dataframe_records": [identity_row()] }),
    );
    assert_eq!(code, 200, "{mixed}");
    assert_eq!(mixed["predictions"][0]["y_bytes"], "z");

    for (body, needle) in [
        (
            json!({"dataframe_split": {"data": [[1, 2]]}, "instances": []}),
            "only one of",
        ),
        (json!({"columns": []}), "none of"),
        (json!({"dataframe_records": {"a": 1}}), "list of objects"),
    ] {
        let (code, e) = s.post("/invocations", &body);
        assert_eq!(code, 400, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{e}");
    }
}

#[test]
fn invocations_without_a_default_model_says_what_to_do() {
    let s = Server::start(&sample_models(), &[]);
    let (code, e) = s.post("/invocations", &json!({"instances": ROWS}));
    assert_eq!(code, 404);
    assert!(
        e["error"].as_str().unwrap().contains("--default-model"),
        "{e}"
    );
}
