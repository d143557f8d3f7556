//! Traffic policies: weighted splits, sticky keys, shadow copies, the admin API
//! that sets them (validated, authenticated, kept across restarts, shared by
//! replicas of one repository), and the predict token.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{client, copy_dir, sample_models, scratch, Server};
use serde_json::{json, Value};

fn row() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": (0..16).map(|i| i as f32 / 16.0).collect::<Vec<_>>()}]})
}

/// A model `m` with versions 1 and 2 (mlp's two versions) and 3 (iris: another
/// interface, so it fails on m's requests), all served.
fn repo(name: &str) -> PathBuf {
    let repo = scratch(name);
    let s = sample_models();
    copy_dir(&s.join("mlp/1"), &repo.join("m/1"));
    copy_dir(&s.join("mlp/2"), &repo.join("m/2"));
    copy_dir(&s.join("iris/1"), &repo.join("m/3"));
    std::fs::write(repo.join("m/config.toml"), "[version_policy]\nall = true\n").unwrap();
    repo
}

fn put(s: &Server, model: &str, policy: &Value, token: Option<&str>) -> (u16, Value) {
    let mut r = client()
        .put(s.url(&format!("/admin/models/{model}/traffic")))
        .json(policy);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().unwrap_or(Value::Null))
}

/// The version that answers `m`'s request with sticky key `key` in `x-user-id`.
fn version_for_key(s: &Server, key: &str) -> String {
    let r: Value = client()
        .post(s.url("/v2/models/m/infer"))
        .header("x-user-id", key)
        .json(&row())
        .send()
        .unwrap()
        .json()
        .unwrap();
    r["model_version"].as_str().unwrap().to_string()
}

/// Sends `n` requests from 8 threads; counts the answers by version.
fn split(
    s: &Server,
    n: usize,
    headers: impl Fn(usize) -> Option<String> + Sync,
) -> BTreeMap<String, usize> {
    let url = s.url("/v2/models/m/infer");
    let counts = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|sc| {
        for t in 0..8 {
            let (url, counts, headers) = (&url, &counts, &headers);
            sc.spawn(move || {
                let c = client();
                for i in (t..n).step_by(8) {
                    let mut r = c.post(url).json(&row());
                    if let Some(k) = headers(i) {
                        r = r.header("x-user-id", k);
                    }
                    let resp = r.send().unwrap();
                    assert_eq!(resp.status(), 200);
                    let v: Value = resp.json().unwrap();
                    *counts
                        .lock()
                        .unwrap()
                        .entry(v["model_version"].as_str().unwrap().to_string())
                        .or_insert(0) += 1;
                }
            });
        }
    });
    counts.into_inner().unwrap()
}

#[test]
fn weights_split_requests_and_sticky_keys_stay_put() {
    let s = Server::start(&repo("traffic-split"), &[]);
    let (_, t) = s.get("/admin/models/m/traffic");
    assert_eq!(
        t["shares"],
        json!({"3": 1.0}),
        "default: the default version takes all: {t}"
    );

    let (code, t) = put(&s, "m", &json!({"weights": {"1": 90, "2": 10}}), None);
    assert_eq!(code, 200, "{t}");
    let counts = split(&s, 10_000, |_| None);
    let share2 = counts.get("2").copied().unwrap_or(0) as f64 / 10_000.0;
    assert!((share2 - 0.10).abs() <= 0.02, "{counts:?}");
    assert_eq!(counts.get("3"), None, "{counts:?}");

    // An explicit version bypasses the policy.
    let (code, r) = s.post("/v2/models/m/versions/1/infer", &row());
    assert_eq!((code, r["model_version"].clone()), (200, json!("1")));

    // Sticky: the same key, the same version; 10 → 20 moves only keys to v2.
    put(
        &s,
        "m",
        &json!({"weights": {"1": 90, "2": 10}, "sticky_header": "X-User-Id"}),
        None,
    );
    let keys = 400;
    let by_key = |s: &Server| -> Vec<String> {
        (0..keys)
            .map(|k| version_for_key(s, &format!("user-{k}")))
            .collect()
    };
    let first = by_key(&s);
    assert_eq!(first, by_key(&s), "a key always lands on the same version");
    put(
        &s,
        "m",
        &json!({"weights": {"1": 80, "2": 20}, "sticky_header": "x-user-id"}),
        None,
    );
    let second = by_key(&s);
    let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    assert!(
        first
            .iter()
            .zip(&second)
            .all(|(a, b)| a == b || (a == "1" && b == "2")),
        "keys only move to the version whose weight rose"
    );
    let moved = moved as f64 / keys as f64;
    assert!((0.05..=0.16).contains(&moved), "{moved}");
    // parameters.routing_key pins too, and wins over the header.
    let mut body = row();
    body["parameters"] = json!({"routing_key": "user-7"});
    let v = s.post("/v2/models/m/infer", &body).1["model_version"].clone();
    assert_eq!(v, json!(second[7]));
}

#[test]
fn shadow_copies_are_measured_and_never_answer_or_fail_the_client() {
    let s = Server::start(&repo("traffic-shadow"), &[]);
    let (code, t) = put(
        &s,
        "m",
        &json!({"weights": {"1": 100}, "shadow": {"version": "2", "percent": 100}}),
        None,
    );
    assert_eq!(code, 200, "{t}");
    let counts = split(&s, 200, |_| None);
    assert_eq!(
        counts,
        BTreeMap::from([("1".to_string(), 200)]),
        "shadow answers never reach the client"
    );
    let start = Instant::now();
    let stats = loop {
        let (_, t) = s.get("/admin/models/m/traffic");
        if t["shadow_stats"]["requests"] == 200 || start.elapsed() > Duration::from_secs(20) {
            break t["shadow_stats"].clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(stats["requests"], 200, "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");
    assert!(
        stats["max_abs_diff"]["output"].as_f64().unwrap() > 0.0,
        "v1 and v2 differ: {stats}"
    );
    assert!((0.0..=1.0).contains(&stats["argmax_agreement"].as_f64().unwrap()));

    // A shadow that fails on every request (another model's interface) never
    // fails one: the client gets v1's answers, the shadow's errors are counted.
    put(
        &s,
        "m",
        &json!({"weights": {"1": 100}, "shadow": {"version": "3", "percent": 100}}),
        None,
    );
    let counts = split(&s, 100, |_| None);
    assert_eq!(counts, BTreeMap::from([("1".to_string(), 100)]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.get("/admin/models/m/traffic").1["shadow_stats"]["errors"]
            .as_u64()
            .unwrap()
            >= 100
    );
}

#[test]
fn bad_policies_are_400_with_the_reason() {
    let s = Server::start(&repo("traffic-bad"), &[]);
    for (policy, needle) in [
        (json!({"weights": {"9": 10}}), "not a ready version"),
        (json!({"weights": {"1": -5}}), "not a traffic policy"),
        (json!({"weights": {"1": 0, "2": 0}}), "every weight is 0"),
        (
            json!({"weights": {"1": 50, "2": 50}, "shadow": {"version": "2", "percent": 5}}),
            "also has a weight",
        ),
        (json!({"weights": {"1": 1}, "bogus": 1}), "unknown field"),
    ] {
        let (code, e) = put(&s, "m", &policy, None);
        assert_eq!(code, 400, "{policy}: {e}");
        assert!(
            e["error"].as_str().unwrap().contains(needle),
            "{policy}: {e}"
        );
    }
    assert_eq!(put(&s, "nope", &json!({"weights": {}}), None).0, 404);
    assert_eq!(
        s.get("/admin/models/m/traffic").1["weights"],
        json!({}),
        "nothing applied"
    );
}

#[test]
fn the_policy_needs_the_admin_token_survives_a_restart_and_reaches_replicas() {
    let repo = repo("traffic-admin");
    let args = ["--admin-token", "s3cret", "--poll-interval", "200ms"];
    let a = Server::start(&repo, &args);
    let b = Server::start(&repo, &args);
    let policy = json!({"weights": {"1": 30, "2": 70}});
    assert_eq!(put(&a, "m", &policy, None).0, 401);
    assert_eq!(put(&a, "m", &policy, Some("wrong")).0, 401);
    let get = |s: &Server, token: Option<&str>| {
        let mut r = client().get(s.url("/admin/models/m/traffic"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().unwrap();
        (
            resp.status().as_u16(),
            resp.json::<Value>().unwrap_or(Value::Null),
        )
    };
    assert_eq!(get(&a, None).0, 401);
    assert_eq!(put(&a, "m", &policy, Some("s3cret")).0, 200);
    assert!(a.logs().contains("traffic policy changed"), "{}", a.logs());
    // The other replica picks it up from the shared state directory.
    let start = Instant::now();
    while get(&b, Some("s3cret")).1["weights"] != policy["weights"] {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replica b never converged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(a);
    drop(b);
    let c = Server::start(&repo, &args);
    assert_eq!(
        get(&c, Some("s3cret")).1["weights"],
        policy["weights"],
        "kept across a restart"
    );
}

#[test]
fn the_api_token_guards_predict_calls() {
    let s = Server::start(&sample_models(), &["--api-token", "p4ss"]);
    let (code, e) = s.post("/v2/models/mlp/infer", &row());
    assert_eq!(code, 401, "{e}");
    let ok = client()
        .post(s.url("/v2/models/mlp/infer"))
        .bearer_auth("p4ss")
        .json(&row())
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(s.get("/v2/health/ready").0, 200, "health stays open");
}

#[test]
fn config_toml_gives_the_initial_policy() {
    let repo = repo("traffic-config");
    std::fs::write(
        repo.join("m/config.toml"),
        "[version_policy]\nall = true\n[traffic]\nweights = { \"1\" = 100 }\n",
    )
    .unwrap();
    let s = Server::start(&repo, &[]);
    assert_eq!(
        s.get("/admin/models/m/traffic").1["weights"],
        json!({"1": 100})
    );
    assert_eq!(
        split(&s, 50, |_| None),
        BTreeMap::from([("1".to_string(), 50)])
    );
}

/// gRPC requests carry the sticky key as metadata: a key lands on the version
/// it lands on over HTTP.
#[test]
fn grpc_requests_follow_the_sticky_header_as_http_ones_do() {
    use switchyard::edge::grpc::proto as pb;
    use switchyard::edge::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;

    let s = Server::start(&repo("traffic-sticky-grpc"), &[]);
    let (code, t) = put(
        &s,
        "m",
        &json!({"weights": {"1": 50, "2": 50}, "sticky_header": "X-User-Id"}),
        None,
    );
    assert_eq!(code, 200, "{t}");
    let keys: Vec<String> = (0..60).map(|k| format!("user-{k}")).collect();
    let over_http: Vec<String> = keys.iter().map(|k| version_for_key(&s, k)).collect();
    let values: Vec<u8> = (0..16)
        .flat_map(|i| (i as f32 / 16.0).to_le_bytes())
        .collect();
    let over_grpc: Vec<String> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
            .await
            .unwrap();
        let mut got = Vec::new();
        for k in &keys {
            let mut req = tonic::Request::new(pb::ModelInferRequest {
                model_name: "m".into(),
                inputs: vec![pb::model_infer_request::InferInputTensor {
                    name: "input".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 16],
                    ..Default::default()
                }],
                raw_input_contents: vec![values.clone().into()],
                ..Default::default()
            });
            req.metadata_mut().insert("x-user-id", k.parse().unwrap());
            got.push(c.model_infer(req).await.unwrap().into_inner().model_version);
        }
        got
    });
    assert!(over_http.iter().any(|v| v == "1") && over_http.iter().any(|v| v == "2"));
    assert_eq!(over_grpc, over_http);
}
