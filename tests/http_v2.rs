//! The V2 HTTP protocol against a real server process and the sample repository.

mod common;

use common::{sample_models, Server};
use serde_json::{json, Value};

fn expected() -> Value {
    let text = std::fs::read_to_string(sample_models().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Element-wise equality at the precision of the datatype: the server must give
/// exactly what Python onnxruntime gave (same library, same CPU).
fn assert_same_data(dtype: &str, got: &Value, want: &Value, what: &str) {
    let (g, w) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(g.len(), w.len(), "{what}: element count");
    for (i, (a, b)) in g.iter().zip(w).enumerate() {
        let same = match dtype {
            "FP32" | "FP16" | "BF16" => a.as_f64().unwrap() as f32 == b.as_f64().unwrap() as f32,
            "FP64" => a.as_f64().unwrap() == b.as_f64().unwrap(),
            _ => a == b,
        };
        assert!(same, "{what}[{i}]: got {a}, want {b}");
    }
}

fn infer_path(key: &str) -> String {
    match key.split_once('/') {
        Some((m, v)) => format!("/v2/models/{m}/versions/{v}/infer"),
        None => format!("/v2/models/{key}/infer"),
    }
}

#[test]
fn health_and_server_metadata() {
    let s = Server::start(&sample_models(), &[]);
    assert_eq!(s.get("/v2/health/live").0, 200);
    assert_eq!(s.get("/v2/health/ready").0, 200);
    let (code, meta) = s.get("/v2");
    assert_eq!(code, 200);
    assert_eq!(meta["name"], "switchyard");
    assert!(meta["version"].is_string());
    assert!(meta["extensions"].is_array());
}

#[test]
fn model_metadata_comes_from_the_graph() {
    let s = Server::start(&sample_models(), &[]);
    let (code, m) = s.get("/v2/models/iris");
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["name"], "iris");
    assert_eq!(m["platform"], "onnxruntime_onnx");
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(
        m["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(
        m["outputs"],
        json!([
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
        ])
    );
    assert_eq!(m["max_batch_size"], 64);

    let (_, mixed) = s.get("/v2/models/mixed");
    assert_eq!(
        mixed["max_batch_size"], 0,
        "a scalar input means no batch dim"
    );
    assert_eq!(
        mixed["inputs"][2],
        json!({"name": "scale", "datatype": "FP64", "shape": []})
    );
    assert_eq!(mixed["outputs"][3]["datatype"], "BYTES");

    let (_, mlp) = s.get("/v2/models/mlp");
    assert_eq!(mlp["versions"], json!(["1", "2"]));
    let (code, v1) = s.get("/v2/models/mlp/versions/1");
    assert_eq!(code, 200);
    assert_eq!(v1["versions"], json!(["1"]));
    assert_eq!(s.get("/v2/models/mlp/ready").0, 200);
    assert_eq!(s.get("/v2/models/mlp/versions/1/ready").0, 200);
    assert_eq!(s.get("/v2/models/mlp/versions/3/ready").0, 404);
    assert_eq!(s.get("/v2/models/nope/ready").0, 404);
}

#[test]
fn outputs_equal_python_onnxruntime() {
    let s = Server::start(&sample_models(), &[]);
    let exp = expected();
    for key in ["iris", "mlp/1", "mlp/2", "mixed"] {
        for (n, case) in exp[key].as_array().unwrap().iter().enumerate() {
            let inputs: Vec<Value> = case["inputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, t)| {
                    json!({"name": name, "datatype": t["datatype"], "shape": t["shape"], "data": t["data"]})
                })
                .collect();
            let (code, resp) = s.post(
                &infer_path(key),
                &json!({ "id": format!("{key}#{n}"), "inputs": inputs }),
            );
            assert_eq!(code, 200, "{key}: {resp}");
            assert_eq!(resp["id"], format!("{key}#{n}"));
            let want = case["outputs"].as_object().unwrap();
            let got = resp["outputs"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{key}: {resp}");
            for o in got {
                let name = o["name"].as_str().unwrap();
                let w = &want[name];
                assert_eq!(o["datatype"], w["datatype"], "{key}.{name}");
                assert_eq!(o["shape"], w["shape"], "{key}.{name}");
                assert_same_data(
                    w["datatype"].as_str().unwrap(),
                    &o["data"],
                    &w["data"],
                    &format!("{key}.{name}"),
                );
            }
        }
    }
}

#[test]
fn versions_are_addressable_and_the_highest_is_default() {
    let s = Server::start(&sample_models(), &[]);
    let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": vec![0.5; 16]}]});
    let (_, d) = s.post("/v2/models/mlp/infer", &body);
    let (_, v1) = s.post("/v2/models/mlp/versions/1/infer", &body);
    let (_, v2) = s.post("/v2/models/mlp/versions/2/infer", &body);
    assert_eq!(d["model_version"], "2");
    assert_eq!(v1["model_version"], "1");
    assert_eq!(d["outputs"], v2["outputs"]);
    assert_ne!(
        v1["outputs"], v2["outputs"],
        "versions have different weights"
    );
}

fn v2_type(name: &str) -> &'static str {
    match name {
        "bool" => "BOOL",
        "uint8" => "UINT8",
        "uint16" => "UINT16",
        "uint32" => "UINT32",
        "uint64" => "UINT64",
        "int8" => "INT8",
        "int16" => "INT16",
        "int32" => "INT32",
        "int64" => "INT64",
        "fp16" => "FP16",
        "fp32" => "FP32",
        "fp64" => "FP64",
        "bf16" => "BF16",
        "bytes" => "BYTES",
        _ => unreachable!(),
    }
}

#[test]
fn every_datatype_round_trips_including_empty_tensors() {
    let s = Server::start(&sample_models(), &[]);
    let values = expected()["identity"][0]["values"].clone();
    let values = values.as_object().unwrap();
    assert_eq!(values.len(), 14);
    for empty in [false, true] {
        let inputs: Vec<Value> = values
            .iter()
            .map(|(name, v)| {
                let (shape, data) = if empty { (json!([0]), json!([])) } else { (v["shape"].clone(), v["data"].clone()) };
                json!({"name": format!("x_{name}"), "datatype": v2_type(name), "shape": shape, "data": data})
            })
            .collect();
        let (code, resp) = s.post("/v2/models/identity/infer", &json!({ "inputs": inputs }));
        assert_eq!(code, 200, "{resp}");
        for o in resp["outputs"].as_array().unwrap() {
            let name = o["name"].as_str().unwrap().strip_prefix("y_").unwrap();
            let want = if empty {
                json!([])
            } else {
                values[name]["data"].clone()
            };
            assert_eq!(o["datatype"], v2_type(name));
            assert_eq!(o["shape"], if empty { json!([0]) } else { json!([3]) });
            assert_same_data(v2_type(name), &o["data"], &want, name);
        }
    }
}

#[test]
fn scalars_nested_data_and_output_selection() {
    let s = Server::start(&sample_models(), &[]);
    let body = |scale: Value| {
        json!({
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [2, 3], "data": [[1, -2, 3], [4, 5, -6]]},
                {"name": "counts", "datatype": "INT64", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
                {"name": "scale", "datatype": "FP64", "shape": [], "data": scale},
                {"name": "tag", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
            ],
            "outputs": [{"name": "total"}, {"name": "positive"}],
            "parameters": {"anything": "passes", "n": 3}
        })
    };
    for scale in [json!(2.0), json!([2.0])] {
        let (code, resp) = s.post("/v2/models/mixed/infer", &body(scale));
        assert_eq!(code, 200, "{resp}");
        let outs = resp["outputs"].as_array().unwrap();
        assert_eq!(outs.len(), 2, "only the requested outputs come back");
        assert_eq!(outs[0]["name"], "total");
        assert_eq!(outs[0]["data"], json!([6, 15]));
        assert_eq!(
            outs[1]["data"],
            json!([true, false, true, true, true, false])
        );
    }
}

fn one(name: &str) -> Value {
    match name {
        "bool" => json!(true),
        "bytes" => json!("x"),
        _ => json!(1),
    }
}

#[test]
fn concurrent_requests_all_get_their_own_answer() {
    let s = Server::start(&sample_models(), &[]);
    let base = s.base.clone();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let c = common::client();
                for j in 0..20 {
                    let x = (i * 100 + j) as f64;
                    let mut inputs: Vec<Value> = ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "fp16", "fp32", "bf16", "bytes"]
                        .iter()
                        .map(|n| json!({"name": format!("x_{n}"), "datatype": v2_type(n), "shape": [1], "data": [one(n)]}))
                        .collect();
                    inputs.push(json!({"name": "x_int64", "datatype": "INT64", "shape": [1], "data": [x as i64]}));
                    inputs.push(json!({"name": "x_fp64", "datatype": "FP64", "shape": [1], "data": [x]}));
                    let body = json!({"id": format!("{i}-{j}"), "inputs": inputs, "outputs": [{"name": "y_int64"}]});
                    let r: Value = c
                        .post(format!("{base}/v2/models/identity/infer"))
                        .json(&body)
                        .send()
                        .unwrap()
                        .json()
                        .unwrap();
                    assert_eq!(r["id"], format!("{i}-{j}"));
                    assert_eq!(r["outputs"][0]["data"], json!([x as i64]));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
