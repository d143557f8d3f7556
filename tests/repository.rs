//! Loading a model repository: config keys, failures that are reported but not fatal,
//! and finding ONNX Runtime.

mod common;

use std::process::Command;

use common::{copy_dir, sample_models, scratch, Server};
use serde_json::{json, Value};

fn mlp_row() -> serde_json::Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": vec![0.25; 16]}]})
}

#[test]
fn a_failing_model_is_reported_and_the_others_serve() {
    let repo = scratch("failing-models");
    copy_dir(&sample_models().join("mlp"), &repo.join("good"));
    // Not an ONNX file.
    std::fs::create_dir_all(repo.join("garbage/1")).unwrap();
    std::fs::write(repo.join("garbage/1/model.onnx"), b"this is not a model").unwrap();
    // A typo in config.toml.
    copy_dir(&sample_models().join("mlp/1"), &repo.join("typo/1"));
    std::fs::write(repo.join("typo/config.toml"), "max_batch = 8\n").unwrap();
    // A GPU device on a CPU build.
    copy_dir(&sample_models().join("mlp/1"), &repo.join("gpu/1"));
    std::fs::write(repo.join("gpu/config.toml"), "device = \"cuda:0\"\n").unwrap();
    // Batching asked of a graph without a batch dimension.
    copy_dir(&sample_models().join("mixed/1"), &repo.join("nobatch/1"));
    std::fs::write(repo.join("nobatch/config.toml"), "max_batch_size = 8\n").unwrap();
    // A preferred batch size past max_batch_size.
    copy_dir(&sample_models().join("mlp/1"), &repo.join("pref/1"));
    std::fs::write(
        repo.join("pref/config.toml"),
        "max_batch_size = 4\n[batching]\npreferred_batch_size = [2, 8]\n",
    )
    .unwrap();
    // One broken version beside a good one: the good one serves.
    copy_dir(&sample_models().join("mlp/1"), &repo.join("half/1"));
    std::fs::create_dir_all(repo.join("half/2")).unwrap();
    std::fs::write(repo.join("half/2/model.onnx"), b"\x08\x07garbage").unwrap();
    // No versions at all; a version folder that is not a number is ignored.
    std::fs::create_dir_all(repo.join("empty/latest")).unwrap();

    let s = Server::start(&repo, &[]);
    assert_eq!(s.get("/v2/health/ready").0, 200);
    let (code, resp) = s.post("/v2/models/good/infer", &mlp_row());
    assert_eq!(code, 200, "{resp}");

    for (model, needle) in [
        ("garbage", "model.onnx"),
        ("typo", "max_batch"),
        ("gpu", "--features cuda"),
        ("nobatch", "max_batch_size = 0"),
        ("pref", "preferred_batch_size 8"),
        ("empty", "no version folder"),
    ] {
        let (code, err) = s.get(&format!("/v2/models/{model}/ready"));
        assert_eq!(code, 503, "{model}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(needle),
            "{model}: {err}"
        );
        let (code, meta) = s.get(&format!("/v2/models/{model}"));
        assert_eq!(code, 200);
        assert_eq!(meta["state"], "UNAVAILABLE", "{model}: {meta}");
        assert!(
            meta["reason"].as_str().unwrap().contains(needle),
            "{model}: {meta}"
        );
        let (code, err) = s.post(&format!("/v2/models/{model}/infer"), &mlp_row());
        assert_eq!(code, 503, "{model}: {err}");
        assert!(s.logs().contains(model), "the failure of {model} is logged");
    }

    let (_, half) = s.get("/v2/models/half");
    assert_eq!(half["state"], "READY");
    assert_eq!(half["versions"], json!(["1"]));
    assert_eq!(half["unavailable_versions"][0]["version"], "2");
    assert_eq!(s.get("/v2/models/half/versions/2/ready").0, 503);
    let (code, resp) = s.post("/v2/models/half/infer", &mlp_row());
    assert_eq!((code, resp["model_version"].clone()), (200, json!("1")));
}

#[test]
fn config_keys_are_applied() {
    let repo = scratch("config-keys");
    copy_dir(&sample_models().join("mlp/1"), &repo.join("small/1"));
    std::fs::write(
        repo.join("small/config.toml"),
        "max_batch_size = 2\ninstances = 3\nintra_op_threads = 1\ndevice = \"cpu\"\n\
         [batching]\npriority_levels = 2\ndefault_priority_level = 2\nmax_queue_delay_microseconds = 100\n\
         preferred_batch_size = [2]\n",
    )
    .unwrap();
    copy_dir(&sample_models().join("mlp/1"), &repo.join("unbatched/1"));
    std::fs::write(repo.join("unbatched/config.toml"), "max_batch_size = 0\n").unwrap();
    let s = Server::start(&repo, &[]);
    let (_, meta) = s.get("/v2/models/small");
    assert_eq!(meta["max_batch_size"], 2);
    let (_, config) = s.get("/v2/models/small/config");
    assert_eq!(
        config["dynamic_batching"],
        json!({"preferred_batch_size": [2], "max_queue_delay_microseconds": 100})
    );
    let three = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 16], "data": vec![0.25; 48]}]});
    let (code, err) = s.post("/v2/models/small/infer", &three);
    assert_eq!(code, 400);
    assert!(err["error"]
        .as_str()
        .unwrap()
        .contains("max_batch_size of 2"));
    let prio = |p: Value| {
        let mut body = mlp_row();
        body["parameters"] = json!({ "priority": p });
        s.post("/v2/models/small/infer", &body)
    };
    assert_eq!(prio(json!(1)).0, 200);
    assert_eq!(prio(json!(0)).0, 200, "0 is the default level");
    let (code, e) = prio(json!(3));
    assert_eq!(code, 400);
    assert!(
        e["error"].as_str().unwrap().contains("2 priority levels"),
        "{e}"
    );
    assert_eq!(prio(json!("high")).0, 400);
    let (_, meta) = s.get("/v2/models/unbatched");
    assert_eq!(meta["max_batch_size"], 0);
    let (code, resp) = s.post("/v2/models/unbatched/infer", &three);
    assert_eq!(
        code, 200,
        "no batch limit without a batch dimension: {resp}"
    );
    let threads = std::fs::read_dir(format!("/proc/{}/task", s.pid()))
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.starts_with("small/1#"))
                .count()
        })
        .unwrap_or(3);
    assert_eq!(threads, 3, "one worker thread per instance");
}

#[test]
fn a_missing_runtime_library_says_how_to_fix_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--models"])
        .arg(sample_models())
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("make build") && err.contains("ORT_DYLIB_PATH"),
        "{err}"
    );
}

#[test]
fn the_runtime_library_is_found_beside_the_binary() {
    // `make test` puts libonnxruntime.so beside target/debug/switchyard, as `make
    // build` does for the release binary: no environment variable is needed.
    let s = Server::start_with(&sample_models(), &[], |c| {
        c.env_remove("ORT_DYLIB_PATH");
    });
    let (code, _) = s.post("/v2/models/mlp/infer", &mlp_row());
    assert_eq!(code, 200);
}

#[test]
fn a_missing_repository_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "serve",
            "--models",
            "/nonexistent/models",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/models") && err.contains("not a directory"),
        "{err}"
    );
}
