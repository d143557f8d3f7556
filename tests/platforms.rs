//! The container contracts of the platforms that run model servers: one model's
//! folder under a name (`--model-name`, KServe's /mnt/models), SageMaker's
//! single-model and multi-model endpoints, and Vertex AI's routes, each driven
//! with the environment and payloads the platform's documentation gives.

mod common;

use common::{client, copy_dir, sample_models, scratch, Server};
use serde_json::{json, Value};

const IRIS_ROWS: [[f64; 4]; 2] = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]];

/// iris/1's files at the top of a folder: what KServe's storage initializer
/// and SageMaker leave for a single-model container.
fn flat_iris(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    copy_dir(&sample_models().join("iris/1"), &dir);
    dir
}

/// The status a request gets.
fn code(req: reqwest::blocking::RequestBuilder) -> u16 {
    req.send().unwrap().status().as_u16()
}

fn v2_iris() -> Value {
    json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
        "data": IRIS_ROWS.iter().flatten().collect::<Vec<_>>()}]})
}

#[test]
fn model_name_serves_one_models_folder_in_each_layout() {
    // A model file at the top: version 1 of NAME.
    let flat = flat_iris("platform-flat");
    let s = Server::start(&flat, &["--model-name", "flowers"]);
    let (st, meta) = s.get("/v2/models/flowers");
    assert_eq!(st, 200, "{meta}");
    assert_eq!(meta["versions"], json!(["1"]));
    let (st, out) = s.post("/v2/models/flowers/infer", &v2_iris());
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["model_version"], "1");
    // The state folder beside the model file is not part of it: a traffic
    // policy written there must not reload the version.
    let (st, body) = s.put_json(
        "/admin/models/flowers/traffic",
        &json!({"weights": {"1": 100}}),
    );
    assert_eq!(st, 200, "{body}");
    drop(s);

    // Numbered version folders: those versions of NAME.
    let versions = scratch("platform-versions");
    copy_dir(&sample_models().join("mlp"), &versions);
    let s = Server::start(&versions, &["--model-name", "net"]);
    let (st, meta) = s.get("/v2/models/net");
    assert_eq!(st, 200, "{meta}");
    assert_eq!(meta["versions"], json!(["1", "2"]));
    drop(s);

    // A repository of model folders still serves as one.
    let repo = scratch("platform-repo");
    copy_dir(&sample_models().join("iris"), &repo.join("iris"));
    let s = Server::start(&repo, &["--model-name", "ignored"]);
    assert_eq!(s.get("/v2/models/iris").0, 200);
    assert_eq!(s.get("/v2/models/ignored").0, 404);
}

#[test]
fn model_name_is_checked() {
    let flat = flat_iris("platform-badname");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--models"])
        .arg(&flat)
        .args([
            "--model-name",
            "../x",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--admin",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a model name"), "{err}");
}

/// A server under SageMaker's environment: the port it names (0 here, so
/// that tests run side by side), and `SAGEMAKER_MULTI_MODEL` when `multi`.
fn sagemaker(models: &std::path::Path, multi: bool, extra: &[&str]) -> Server {
    let mut args = vec!["--platform", "sagemaker"];
    args.extend_from_slice(extra);
    Server::start_with(models, &args, |c| {
        c.env("SAGEMAKER_BIND_TO_PORT", "0");
        if multi {
            c.env("SAGEMAKER_MULTI_MODEL", "true");
        }
    })
}

#[test]
fn sagemaker_single_model_ping_and_invocations() {
    // mlp/1: one input [N, 16], one output [N, 4], so a DataFrame fits it.
    let flat = scratch("platform-sm-single");
    copy_dir(&sample_models().join("mlp/1"), &flat);
    let s = sagemaker(&flat, false, &[]);
    assert!(
        s.logs().contains("SageMaker's container contract"),
        "{}",
        s.logs()
    );
    // /ping: 200 once ready, well within SageMaker's 2 s.
    let t = std::time::Instant::now();
    let r = client().get(s.public_url("/ping")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < std::time::Duration::from_secs(2));

    let invoke = |body: Vec<u8>, ct: &str, attrs: Option<&str>| {
        let mut req = client()
            .post(s.public_url("/invocations"))
            .header("content-type", ct)
            .body(body);
        if let Some(a) = attrs {
            req = req.header("X-Amzn-SageMaker-Custom-Attributes", a);
        }
        let r = req.send().unwrap();
        let st = r.status().as_u16();
        let echoed = r
            .headers()
            .get("x-amzn-sagemaker-custom-attributes")
            .map(|v| v.to_str().unwrap().to_string());
        (st, r.json::<Value>().unwrap(), echoed)
    };
    let row: Vec<f64> = (0..16).map(|i| i as f64 / 10.0).collect();
    let cols: Vec<String> = (0..16).map(|i| format!("f{i}")).collect();
    // A V2 infer request answers as one.
    let v2 =
        json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": row}]});
    let (st, v2, echoed) = invoke(
        serde_json::to_vec(&v2).unwrap(),
        "application/json",
        Some("trace_id=abc,eos"),
    );
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v2["model_name"], "model");
    assert_eq!(echoed.as_deref(), Some("trace_id=abc,eos"));
    let from_v2 = v2["outputs"][0]["data"].clone();
    // MLflow's DataFrame and CSV give the same numbers.
    let (st, frame, echoed) = invoke(
        serde_json::to_vec(&json!({"dataframe_split": {"columns": cols, "data": [row]}})).unwrap(),
        "application/json",
        None,
    );
    assert_eq!(st, 200, "{frame}");
    assert_eq!(echoed, None);
    let from_frame: Vec<Value> = frame["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["output"].clone())
        .collect();
    assert_eq!(Value::Array(from_frame), from_v2);
    let csv = format!(
        "{}\n{}\n",
        cols.join(","),
        row.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let (st, from_csv, _) = invoke(csv.into_bytes(), "text/csv", None);
    assert_eq!(st, 200, "{from_csv}");
    assert_eq!(from_csv, frame);
    // A malformed body is the client's fault.
    let (st, err, _) = invoke(
        b"{\"inputs\": [{\"datatype\": 3}]}".to_vec(),
        "application/json",
        None,
    );
    assert_eq!(st, 400, "{err}");
}

#[test]
fn sagemaker_multi_model_api() {
    // Where SageMaker unpacks models (/opt/ml/models in the container).
    let root = scratch("platform-mme-root");
    let s = sagemaker(&root, true, &["--multi-model-root", root.to_str().unwrap()]);
    let url = |p: &str| s.public_url(p);
    let iris = root.join("iris");
    copy_dir(&sample_models().join("iris"), &iris);
    let load = json!({"model_name": "iris", "url": iris});
    assert_eq!(
        client()
            .get(url("/models"))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap(),
        json!({"models": []})
    );
    let r = client().post(url("/models")).json(&load).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    // Loaded already: 409.
    let r = client().post(url("/models")).json(&load).send().unwrap();
    assert_eq!(r.status(), 409);
    let listed: Value = client().get(url("/models")).send().unwrap().json().unwrap();
    assert_eq!(listed["models"][0]["modelName"], "iris");
    assert_eq!(listed["models"][0]["modelUrl"], iris.to_str().unwrap());
    let one = client().get(url("/models/iris")).send().unwrap();
    assert_eq!(one.status(), 200);
    let r = client()
        .post(url("/models/iris/invoke"))
        .json(&json!({"instances": IRIS_ROWS}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap()["predictions"]["label"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Unloaded: gone from every route.
    assert_eq!(code(client().delete(url("/models/iris"))), 200);
    assert_eq!(code(client().get(url("/models/iris"))), 404);
    assert_eq!(code(client().delete(url("/models/iris"))), 404);
    let invoke = client()
        .post(url("/models/iris/invoke"))
        .json(&json!({"instances": IRIS_ROWS}));
    assert_eq!(code(invoke), 404);
    // And loads again under the same name.
    let r = client().post(url("/models")).json(&load).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    // A url that is no folder, or not one under the root (a link out of it
    // included), or relative; a body that is no load: 400.
    let outside = sample_models().join("iris");
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    for bad in [
        root.join("nope"),
        outside.clone(),
        root.join("link"),
        root.join("../platform-mme-root/.."),
        "iris".into(),
        root.clone(),
    ] {
        let r = client()
            .post(url("/models"))
            .json(&json!({"model_name": "x", "url": bad}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{}", bad.display());
    }
    assert_eq!(
        client()
            .post(url("/models"))
            .body("{}")
            .send()
            .unwrap()
            .status(),
        400
    );
    // A model file that is no model fails its load, and frees the name.
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.onnx"), b"not a model").unwrap();
    let r = client()
        .post(url("/models"))
        .json(&json!({"model_name": "broken", "url": broken}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(code(client().get(url("/models/broken"))), 404);
    assert_eq!(s.get("/v2/models/broken").0, 404);
}

#[test]
fn sagemaker_multi_model_without_memory_answers_507() {
    let root = scratch("platform-mme-507-root");
    let s = sagemaker(
        &root,
        true,
        &[
            "--memory-limit",
            "1MB",
            "--multi-model-root",
            root.to_str().unwrap(),
        ],
    );
    let iris = root.join("iris");
    copy_dir(&sample_models().join("iris"), &iris);
    let r = client()
        .post(s.public_url("/models"))
        .json(&json!({"model_name": "iris", "url": iris}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 507, "{}", r.text().unwrap());
    assert_eq!(
        client()
            .get(s.public_url("/models/iris"))
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn vertex_routes_instances_to_predictions() {
    let flat = flat_iris("platform-vertex");
    // Vertex AI's limit is 1.5 MB a request, ~84,000 iris rows: one batch.
    std::fs::write(flat.join("config.toml"), "max_batch_size = 100000\n").unwrap();
    let health = "/v1/endpoints/123/deployedModels/456";
    let predict = "/v1/endpoints/123/deployedModels/456:predict";
    let s = Server::start_with(&flat, &[], |c| {
        c.env("AIP_HTTP_PORT", "0")
            .env("AIP_HEALTH_ROUTE", health)
            .env("AIP_PREDICT_ROUTE", predict)
            .env("AIP_MODE", "PREDICTION")
            .env("AIP_STORAGE_URI", "gs://bucket/model");
    });
    assert!(
        s.logs().contains("Vertex AI's container contract"),
        "{}",
        s.logs()
    );
    assert_eq!(
        client().get(s.public_url(health)).send().unwrap().status(),
        200
    );
    let r = client()
        .post(s.public_url(predict))
        .json(&json!({"instances": IRIS_ROWS, "parameters": {}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().unwrap();
    assert_eq!(out["predictions"].as_array().unwrap().len(), 2, "{out}");
    // A request of Vertex AI's 1.5 MB limit is served whole.
    let row = [5.1, 3.5, 1.4, 0.2];
    let mut rows = vec![row; 1];
    while serde_json::to_vec(&json!({"instances": rows}))
        .unwrap()
        .len()
        < 1_500_000
    {
        rows.extend(std::iter::repeat_n(row, 1000));
    }
    let r = client()
        .post(s.public_url(predict))
        .json(&json!({"instances": rows}))
        .send()
        .unwrap();
    let st = r.status();
    let out: Value = r.json().unwrap();
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["predictions"].as_array().unwrap().len(), rows.len());
    // Only its own routes are added: the others are where they were.
    assert_eq!(s.get("/v2/health/ready").0, 200);
}
