//! Progressive rollouts driven by the candidate's own live metrics: a healthy
//! candidate is promoted, a real faulty one (a model that fails on real inputs,
//! though it passes warm-up) is rolled back on its own, and an abort restores
//! the stable version.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, copy_dir, repo_root, sample_models, scratch, Server};
use serde_json::{json, Value};

fn row() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": (0..16).map(|i| i as f32 / 16.0).collect::<Vec<_>>()}]})
}

/// `m`: version 1 is mlp's; version 2 is `candidate`.
fn repo(name: &str, candidate: &std::path::Path) -> std::path::PathBuf {
    let repo = scratch(name);
    copy_dir(&sample_models().join("mlp/1"), &repo.join("m/1"));
    copy_dir(candidate, &repo.join("m/2"));
    std::fs::write(repo.join("m/config.toml"), "[version_policy]\nall = true\n").unwrap();
    repo
}

/// Sends unversioned requests to `m` until dropped; answers are not checked.
struct Load(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Load {
    fn start(s: &Server) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, flag) = (s.url("/v2/models/m/infer"), stop.clone());
        let h = std::thread::spawn(move || {
            let c = client();
            while !flag.load(Ordering::Relaxed) {
                let _ = c.post(&url).json(&row()).send();
            }
        });
        Load(stop, Some(h))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// Gives version 1 all the traffic, puts load on `m` and asks for a rollout.
fn roll_out(s: &Server, spec: Value) -> (Load, u16, Value) {
    assert_eq!(
        s.put_json("/admin/models/m/traffic", &json!({"weights": {"1": 100}}))
            .0,
        200
    );
    let load = Load::start(s);
    let (code, st) = s.post("/admin/models/m/rollout", &spec);
    (load, code, st)
}

fn wait_phase(s: &Server, phase: &str) -> Value {
    let start = Instant::now();
    loop {
        let (code, st) = s.get("/admin/models/m/rollout");
        assert_eq!(code, 200, "{st}");
        if st["phase"] == phase {
            return st;
        }
        assert!(
            st["phase"] == "progressing",
            "ended {} instead of {phase}: {st}",
            st["phase"]
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still progressing: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_healthy_candidate_is_promoted_step_by_step() {
    let s = Server::start(
        &repo("rollout-healthy", &sample_models().join("mlp/2")),
        &[],
    );
    // v2 is the default (highest): make v1 the stable one first.
    let (_load, code, st) = roll_out(
        &s,
        json!({"candidate": "2", "step_weight": 25, "max_weight": 50, "interval": "300ms",
                "threshold": 2, "min_requests": 10, "max_error_rate": 0.01, "max_p99_latency_ms": 2000}),
    );
    assert_eq!(code, 200, "{st}");
    assert_eq!(
        (st["stable"].clone(), st["weight"].clone()),
        (json!("1"), json!(25))
    );
    let st = wait_phase(&s, "promoted");
    let steps: Vec<&str> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(steps.iter().any(|w| w.contains("25 → 50")), "{steps:?}");
    assert_eq!(
        s.get("/admin/models/m/traffic").1["weights"],
        json!({"2": 100})
    );
    assert!(s.logs().contains("rollout promoted"));
}

#[test]
fn a_faulty_candidate_is_rolled_back_on_its_own() {
    let faulty = repo_root().join("tests/fixtures/faulty_mlp");
    let s = Server::start(&repo("rollout-faulty", &faulty), &[]);
    let (_load, code, st) = roll_out(
        &s,
        json!({"candidate": "2", "step_weight": 20, "max_weight": 60, "interval": "300ms",
                "threshold": 2, "min_requests": 5}),
    );
    assert_eq!(code, 200, "{st}");
    let st = wait_phase(&s, "rolled_back");
    let failed: Vec<&Value> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["what"].as_str().unwrap().starts_with("failed check"))
        .collect();
    assert_eq!(failed.len(), 2, "{st}");
    assert!(failed[0]["error_rate"].as_f64().unwrap() > 0.5, "{st}");
    assert_eq!(
        s.get("/admin/models/m/traffic").1["weights"],
        json!({"1": 100})
    );
    // Every answer now comes from the stable version.
    for _ in 0..20 {
        assert_eq!(s.post("/v2/models/m/infer", &row()).1["model_version"], "1");
    }
}

#[test]
fn an_aborted_rollout_restores_the_stable_version_and_bad_ones_are_refused() {
    let s = Server::start(
        &repo("rollout-abort", &sample_models().join("mlp/2")),
        &["--admin-token", "t0k"],
    );
    let body = json!({"candidate": "2", "interval": "1h"});
    let (code, _) = s.post("/admin/models/m/rollout", &body);
    assert_eq!(code, 401, "the admin token is needed");
    let call = |method: reqwest::Method, body: Option<&Value>| {
        let mut r = client()
            .request(method, s.url("/admin/models/m/rollout"))
            .bearer_auth("t0k");
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().unwrap();
        (
            resp.status().as_u16(),
            resp.json::<Value>().unwrap_or(Value::Null),
        )
    };
    for (bad, needle) in [
        (json!({"candidate": "7"}), "not a ready version"),
        (json!({"candidate": "2", "interval": "soon"}), "interval"),
        // Past the end of time: refused, not a panic of the control plane.
        (
            json!({"candidate": "2", "interval": "300000000000y"}),
            "at most 24h",
        ),
        (json!({"candidate": "2", "step_weight": 0}), "1..=100"),
        (json!({"candidate": "2", "surprise": 1}), "unknown field"),
    ] {
        let (code, e) = call(reqwest::Method::POST, Some(&bad));
        assert_eq!(code, 400, "{bad}: {e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{bad}: {e}");
    }
    // Stable: v1 (given all the traffic first), candidate v2 at 10 %.
    let put = client()
        .put(s.url("/admin/models/m/traffic"))
        .bearer_auth("t0k")
        .json(&json!({"weights": {"1": 100}}))
        .send()
        .unwrap();
    assert_eq!(put.status(), 200);
    let (code, st) = call(reqwest::Method::POST, Some(&body));
    assert_eq!((code, st["weight"].clone()), (200, json!(10)), "{st}");
    let (code, again) = call(reqwest::Method::POST, Some(&body));
    assert_eq!(code, 400, "one rollout at a time: {again}");
    let (code, st) = call(reqwest::Method::DELETE, None);
    assert_eq!((code, st["phase"].clone()), (200, json!("aborted")), "{st}");
    let (_, t) = (
        0,
        client()
            .get(s.url("/admin/models/m/traffic"))
            .bearer_auth("t0k")
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap(),
    );
    assert_eq!(t["weights"], json!({"1": 100}));
}

#[test]
fn a_candidate_whose_inputs_drift_is_rolled_back() {
    let repo = scratch("rollout-drift");
    let iris = sample_models().join("iris/1");
    copy_dir(&iris, &repo.join("m/1"));
    copy_dir(&iris, &repo.join("m/2"));
    std::fs::write(repo.join("m/config.toml"), "[version_policy]\nall = true\n").unwrap();
    let s = Server::start(&repo, &[]);
    assert_eq!(
        s.put_json("/admin/models/m/traffic", &json!({"weights": {"1": 100}}))
            .0,
        200
    );
    // Flowers far larger than any in the training data.
    let (stop, url) = (
        Arc::new(AtomicBool::new(false)),
        s.url("/v2/models/m/infer"),
    );
    let flag = stop.clone();
    let load = std::thread::spawn(move || {
        let c = client();
        let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [12.0, 3.0, 5.0, 1.5]}]});
        while !flag.load(Ordering::Relaxed) {
            let _ = c.post(&url).json(&body).send();
        }
    });
    let (code, st) = s.post(
        "/admin/models/m/rollout",
        &json!({"candidate": "2", "step_weight": 30, "max_weight": 60, "interval": "300ms",
                "threshold": 2, "min_requests": 5, "max_drift_psi": 0.2}),
    );
    assert_eq!(code, 200, "{st}");
    let st = wait_phase(&s, "rolled_back");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(st.to_string().contains("input drift PSI"), "{st}");
}
