//! `--latency-mode` and a model's `latency_mode`: every mode serves the same
//! answers (only the waiting differs), and a wrong one is refused at start.

mod common;

use common::{copy_dir, sample_models, scratch, Server};
use serde_json::json;

fn answer(s: &Server) -> serde_json::Value {
    let data: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
    let body =
        json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": data}]});
    let (code, answer) = s.post("/v2/models/mlp/versions/1/infer", &body);
    assert_eq!(code, 200, "{answer}");
    answer["outputs"][0]["data"].clone()
}

#[test]
fn every_mode_serves_the_same_answers() {
    let repo = scratch("latency-mode-repo");
    copy_dir(&sample_models().join("mlp"), &repo.join("mlp"));
    let mut answers = Vec::new();
    for mode in ["cpu", "balanced", "latency"] {
        let s = Server::start(&repo, &["--latency-mode", mode]);
        for _ in 0..20 {
            answers.push(answer(&s));
        }
    }
    // A model's own key, beside the server's mode.
    std::fs::write(
        repo.join("mlp/config.toml"),
        "latency_mode = \"cpu\"\n\n[version_policy]\nall = true\n",
    )
    .unwrap();
    let s = Server::start(&repo, &["--latency-mode", "latency"]);
    answers.push(answer(&s));
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_wrong_mode_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--models", "models", "--latency-mode", "fast"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cpu, balanced or latency"), "{err}");
}
