//! `switchyard profile` and the drift endpoint's refusals: models it cannot
//! profile and versions without a profile say why.

mod common;

use common::{repo_root, sample_models, scratch, Server};

fn profile(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("profile")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn profiles_are_written_and_refusals_say_why() {
    let out = scratch("drift-profile").join("baseline.json");
    let iris = sample_models().join("iris/1");
    let data = repo_root().join("models/iris/reference.csv");
    let ok = profile(&[
        "--model",
        iris.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(p["rows"], 150);
    let committed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(iris.join("baseline.json")).unwrap()).unwrap();
    assert_eq!(
        p, committed,
        "the sample profile is what `make models` writes"
    );

    let mixed = sample_models().join("mixed/1");
    let bad = profile(&[
        "--model",
        mixed.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("one input"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let wrong_width = profile(&[
        "--model",
        sample_models().join("mlp/1").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&wrong_width.stderr).contains("takes 16"),
        "{}",
        String::from_utf8_lossy(&wrong_width.stderr)
    );

    let s = Server::start(&sample_models(), &[]);
    let (code, e) = s.get("/v2/models/mlp/drift");
    assert_eq!(code, 404);
    assert!(
        e["error"].as_str().unwrap().contains("no drift profile"),
        "{e}"
    );
    assert_eq!(s.get("/v2/models/iris/drift").0, 200);
}
