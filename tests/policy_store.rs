//! `--policy-store configmap:DIR`: traffic policies from a Kubernetes
//! ConfigMap mounted as files, laid out and swapped here exactly as the
//! kubelet does (a timestamped folder, `..data` pointing at it, each key a
//! link through `..data`, the swap one rename of `..data`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{copy_dir, sample_models, scratch, Server};
use serde_json::{json, Value};

/// Publishes `files` into the ConfigMap folder `dir` as the kubelet's atomic
/// writer does.
fn kubelet_publish(dir: &Path, stamp: &str, files: &[(&str, &str)]) {
    let data = dir.join(format!("..{stamp}"));
    std::fs::create_dir_all(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{stamp}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

fn weights(s: &Server) -> Value {
    s.get("/admin/models/mlp/traffic").1["weights"].clone()
}

/// Waits for the policy to become `want`; how long it took.
fn applied(s: &Server, want: &Value) -> Duration {
    let t = Instant::now();
    while &weights(s) != want {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "not applied: {} (want {want})\n{}",
            weights(s),
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

#[test]
fn a_configmap_swap_is_applied_and_admin_writes_are_refused() {
    let repo = scratch("policy-cm-repo");
    copy_dir(&sample_models().join("mlp"), &repo.join("mlp"));
    let cm = scratch("policy-cm");
    kubelet_publish(
        &cm,
        "2026_11_30_1",
        &[("mlp.json", r#"{"weights": {"1": 90, "2": 10}}"#)],
    );
    let store = format!("configmap:{}", cm.display());
    // A long poll: only the watch on the ConfigMap can apply a swap quickly.
    let s = Server::start(
        &repo,
        &["--policy-store", &store, "--poll-interval", "120s"],
    );
    applied(&s, &json!({"1": 90, "2": 10}));

    kubelet_publish(
        &cm,
        "2026_11_30_2",
        &[("mlp.json", r#"{"weights": {"1": 50, "2": 50}}"#)],
    );
    let took = applied(&s, &json!({"1": 50, "2": 50}));
    println!("a ConfigMap swap applied in {took:?}");

    // The operator changes the ConfigMap; the admin API says so.
    let (code, body) = s.put_json("/admin/models/mlp/traffic", &json!({"weights": {"1": 100}}));
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("managed by the ConfigMap"),
        "{body}"
    );
    assert_eq!(weights(&s), json!({"1": 50, "2": 50}));

    // A malformed policy keeps the last good one; GET traffic and the log say why.
    kubelet_publish(
        &cm,
        "2026_11_30_3",
        &[("mlp.json", r#"{"weights": {"1": "#)],
    );
    let t = Instant::now();
    let why = loop {
        let (_, body) = s.get("/admin/models/mlp/traffic");
        if let Some(e) = body["policy_error"].as_str() {
            break e.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{body}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        why.contains("the ConfigMap") && why.contains("not a traffic policy"),
        "{why}"
    );
    assert!(s.logs().contains("traffic policy not applied"));
    assert_eq!(weights(&s), json!({"1": 50, "2": 50}));
    // And a good one after it applies, and clears the error.
    kubelet_publish(
        &cm,
        "2026_11_30_4",
        &[("mlp.json", r#"{"weights": {"2": 100}}"#)],
    );
    applied(&s, &json!({"2": 100}));
    assert!(s
        .get("/admin/models/mlp/traffic")
        .1
        .get("policy_error")
        .is_none());
}

#[test]
fn the_flag_names_a_kind_of_store() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--models", "/tmp", "--policy-store", "etcd3:x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a policy store"), "{err}");
}
