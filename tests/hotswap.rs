//! The server follows its repository while it serves: versions and models that
//! appear are loaded, warmed up and published; replaced files are reloaded;
//! broken ones never replace what serves; removed ones are retired. And no
//! request is lost while it happens.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, copy_dir, sample_models, scratch, Server};
use serde_json::{json, Value};

fn mlp_row() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": (0..16).map(|i| i as f32 / 16.0).collect::<Vec<_>>()}]})
}

/// Publishes a version the safe way: written under a hidden name, renamed into place.
fn publish(from: &Path, model_dir: &Path, version: u64) {
    let tmp = model_dir.join(format!(".{version}.tmp"));
    copy_dir(from, &tmp);
    std::fs::rename(&tmp, model_dir.join(version.to_string())).unwrap();
}

/// Polls until `f` holds, for up to 30 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn answer(s: &Server, model: &str) -> (u16, Value) {
    s.post(&format!("/v2/models/{model}/infer"), &mlp_row())
}

#[test]
fn versions_and_models_that_appear_change_or_go_are_followed() {
    let repo = scratch("hotswap-follow");
    let mlp = sample_models().join("mlp");
    copy_dir(&mlp.join("1"), &repo.join("m/1"));
    // A reference that serves v2's files, to compare answers with.
    copy_dir(&mlp.join("2"), &repo.join("ref/1"));
    let s = Server::start(&repo, &["--poll-interval", "200ms"]);
    let (code, r) = answer(&s, "m");
    assert_eq!((code, r["model_version"].clone()), (200, json!("1")));
    let want_v2 = answer(&s, "ref").1["outputs"].clone();
    assert_ne!(r["outputs"], want_v2);

    // A new version: served once complete; the old one is retired (latest = 1).
    publish(&mlp.join("2"), &repo.join("m"), 2);
    eventually("version 2 answers", || {
        answer(&s, "m").1["model_version"] == "2"
    });
    assert_eq!(answer(&s, "m").1["outputs"], want_v2);
    assert_ne!(s.get("/v2/models/m/versions/1/ready").0, 200, "v1 retired");
    assert!(s.logs().contains("retired"), "{}", s.logs());

    // A broken new version never replaces the one that serves.
    std::fs::create_dir_all(repo.join("m/.3.tmp")).unwrap();
    std::fs::write(repo.join("m/.3.tmp/model.onnx"), b"not a model").unwrap();
    std::fs::rename(repo.join("m/.3.tmp"), repo.join("m/3")).unwrap();
    eventually("version 3 is reported", || {
        s.get("/v2/models/m/versions/3/ready").0 == 503
    });
    let (_, index) = s.get("/v2/repository/index");
    let v3 = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "m" && e["version"] == "3")
        .cloned()
        .unwrap();
    assert_eq!(v3["state"], "UNAVAILABLE", "{index}");
    assert!(
        v3["reason"].as_str().unwrap().contains("model.onnx"),
        "{v3}"
    );
    let (code, r) = answer(&s, "m");
    assert_eq!((code, r["model_version"].clone()), (200, json!("2")));
    assert!(s.logs().contains("does not replace what serves"));

    // Fixed in place: version 3 loads and serves.
    std::fs::copy(mlp.join("1/model.onnx"), repo.join("m/3/model.onnx")).unwrap();
    eventually("version 3 answers", || {
        answer(&s, "m").1["model_version"] == "3"
    });

    // A model folder appears, then goes.
    copy_dir(&mlp.join("1"), &repo.join(".new.tmp/1"));
    std::fs::rename(repo.join(".new.tmp"), repo.join("new")).unwrap();
    eventually("the new model answers", || answer(&s, "new").0 == 200);
    std::fs::remove_dir_all(repo.join("new")).unwrap();
    eventually("the removed model is gone", || answer(&s, "new").0 == 404);

    // A broken config.toml keeps what serves, and says why.
    std::fs::write(repo.join("m/config.toml"), "max_batch = 2\n").unwrap();
    eventually("the config error is reported", || {
        s.get("/v2/models/m").1.to_string().contains("max_batch")
            || s.logs().contains("config.toml cannot be used")
    });
    assert_eq!(answer(&s, "m").0, 200);
    // A valid one is applied: all versions serve.
    std::fs::write(repo.join("m/config.toml"), "[version_policy]\nall = true\n").unwrap();
    eventually("every version serves", || {
        s.get("/v2/models/m").1["versions"] == json!(["1", "2", "3"])
    });
}

#[test]
fn replaced_files_are_reloaded_and_the_control_modes_hold() {
    let repo = scratch("hotswap-replace");
    let mlp = sample_models().join("mlp");
    copy_dir(&mlp.join("1"), &repo.join("m/1"));
    copy_dir(&mlp.join("2"), &repo.join("ref/1"));
    let s = Server::start(&repo, &["--poll-interval", "200ms"]);
    let want_v2 = answer(&s, "ref").1["outputs"].clone();
    std::fs::copy(mlp.join("2/model.onnx"), repo.join("m/1/model.onnx")).unwrap();
    eventually("the new files answer", || {
        answer(&s, "m").1["outputs"] == want_v2
    });
    // Unloaded by request: the watcher leaves it unloaded until a load.
    assert_eq!(s.post("/v2/repository/models/m/unload", &json!({})).0, 200);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(answer(&s, "m").0, 503);
    assert_eq!(s.post("/v2/repository/models/m/load", &json!({})).0, 200);
    assert_eq!(answer(&s, "m").0, 200);

    // explicit: changes on disk wait for a load request.
    let e = Server::start(
        &repo,
        &["--model-control", "explicit", "--poll-interval", "100ms"],
    );
    publish(&mlp.join("1"), &repo.join("m"), 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(answer(&e, "m").1["model_version"], "1");
    assert_eq!(e.post("/v2/repository/models/m/load", &json!({})).0, 200);
    assert_eq!(answer(&e, "m").1["model_version"], "2");

    // none: no loads on request.
    let n = Server::start(&repo, &["--model-control", "none"]);
    let (code, err) = n.post("/v2/repository/models/m/load", &json!({}));
    assert_eq!(code, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("none"), "{err}");
}

#[test]
fn a_load_past_the_memory_limit_is_refused_with_the_reason() {
    let repo = scratch("hotswap-memory");
    copy_dir(&sample_models().join("mlp/1"), &repo.join("m/1"));
    let s = Server::start(&repo, &["--memory-limit", "1MiB"]);
    let (code, err) = s.get("/v2/models/m/ready");
    assert_eq!(code, 503);
    assert!(
        err["error"].as_str().unwrap().contains("--memory-limit"),
        "{err}"
    );
    assert!(s.logs().contains("--memory-limit"));
}

/// Concurrency 32 for the whole test while versions are added and removed 10
/// times: every request succeeds, each client sees versions only move forward
/// (the table swap is atomic and the old version is retired when the new one is
/// published), and after the last swap only the last version answers.
#[test]
fn no_request_is_lost_while_versions_come_and_go() {
    let repo = scratch("hotswap-load");
    let mlp = sample_models().join("mlp");
    copy_dir(&mlp.join("1"), &repo.join("m/1"));
    let s = Server::start(&repo, &["--poll-interval", "100ms"]);
    let url = s.url("/v2/models/m/infer");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (url, stop, seen) = (url.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut mine: Vec<(Instant, u64)> = Vec::new();
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match c.post(&url).json(&mlp_row()).send() {
                        Ok(r) if r.status() == 200 => {
                            let v: Value = r.json().unwrap();
                            mine.push((
                                sent,
                                v["model_version"].as_str().unwrap().parse().unwrap(),
                            ));
                        }
                        Ok(r) => failures.push(format!(
                            "{} {}",
                            r.status(),
                            r.text().unwrap_or_default()
                        )),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                seen.lock().unwrap().push(mine);
                failures
            })
        })
        .collect();
    for v in 2..=11u64 {
        let from = mlp.join(if v % 2 == 0 { "2" } else { "1" });
        publish(&from, &repo.join("m"), v);
        eventually(&format!("version {v} answers"), || {
            s.get("/v2/models/m").1["versions"] == json!([v.to_string()])
        });
        std::fs::remove_dir_all(repo.join(format!("m/{}", v - 1))).unwrap();
    }
    let last_swap = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let seen = seen.lock().unwrap();
    let total: usize = seen.iter().map(Vec::len).sum();
    assert!(total > 500, "only {total} requests were made");
    for mine in seen.iter() {
        assert!(
            mine.windows(2).all(|w| w[0].1 <= w[1].1),
            "a client saw an older version after a newer one"
        );
        assert!(
            mine.iter()
                .filter(|(t, _)| *t > last_swap)
                .all(|(_, v)| *v == 11),
            "an answer from a retired version after the last swap"
        );
    }
    let versions: std::collections::BTreeSet<u64> =
        seen.iter().flatten().map(|(_, v)| *v).collect();
    assert!(
        versions.len() >= 6,
        "the load saw few of the versions: {versions:?}"
    );
}

#[test]
fn warm_up_requests_come_from_the_warmup_folder_and_gate_the_version() {
    let repo = scratch("hotswap-warmup");
    let mlp = sample_models().join("mlp");
    copy_dir(&mlp.join("1"), &repo.join("good/1"));
    std::fs::create_dir_all(repo.join("good/1/warmup")).unwrap();
    std::fs::write(repo.join("good/1/warmup/a.json"), mlp_row().to_string()).unwrap();
    copy_dir(&mlp.join("1"), &repo.join("bad/1"));
    std::fs::create_dir_all(repo.join("bad/1/warmup")).unwrap();
    std::fs::write(
        repo.join("bad/1/warmup/a.json"),
        json!({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 16], "data": vec![0.0; 16]}]}).to_string(),
    )
    .unwrap();
    let s = Server::start(&repo, &[]);
    assert_eq!(answer(&s, "good").0, 200);
    let (_, st) = s.get("/v2/models/good/stats");
    assert_eq!(
        st["model_stats"][0]["inference_count"], 1,
        "warm-up runs are not counted as served: {st}"
    );
    let (code, err) = s.get("/v2/models/bad/ready");
    assert_eq!(code, 503);
    let e = err["error"].as_str().unwrap();
    assert!(e.contains("warm-up file") && e.contains("nope"), "{e}");
}
