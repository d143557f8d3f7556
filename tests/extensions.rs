//! Triton's HTTP extensions: model configuration, statistics, and the repository
//! (index, and load/unload behind the admin policy).

mod common;

use common::{client, sample_models, Server};
use serde_json::{json, Value};

fn mlp_row() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": vec![0.25; 16]}]})
}

#[test]
fn model_config_and_statistics() {
    let s = Server::start(&sample_models(), &[]);
    let (code, c) = s.get("/v2/models/iris/config");
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["max_batch_size"], 64);
    assert_eq!(
        c["input"],
        json!([{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}])
    );
    assert_eq!(
        c["output"][0],
        json!({"name": "label", "data_type": "TYPE_INT64", "dims": []})
    );
    assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU");
    assert_eq!(
        c["dynamic_batching"],
        json!({"preferred_batch_size": [], "max_queue_delay_microseconds": 0})
    );
    // config.toml's version policy, as Triton writes it; none is latest 1.
    assert_eq!(c["version_policy"], json!({"latest": {"num_versions": 1}}));
    assert_eq!(
        s.get("/v2/models/mlp/config").1["version_policy"],
        json!({"all": {}})
    );
    let (_, mixed) = s.get("/v2/models/mixed/versions/1/config");
    assert_eq!(mixed["max_batch_size"], 0);
    assert!(mixed.get("dynamic_batching").is_none(), "{mixed}");
    assert_eq!(
        mixed["input"][0]["dims"],
        json!([-1, 3]),
        "no batch dim to drop"
    );
    assert_eq!(s.get("/v2/models/nope/config").0, 404);

    for _ in 0..3 {
        assert_eq!(s.post("/v2/models/mlp/versions/1/infer", &mlp_row()).0, 200);
    }
    let three = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 16], "data": vec![0.5; 48]}]});
    assert_eq!(s.post("/v2/models/mlp/versions/1/infer", &three).0, 200);
    let (code, st) = s.get("/v2/models/mlp/versions/1/stats");
    assert_eq!(code, 200);
    let m = &st["model_stats"][0];
    assert_eq!(
        (m["name"].clone(), m["version"].clone()),
        (json!("mlp"), json!("1"))
    );
    assert_eq!(m["inference_stats"]["success"]["count"], 4);
    assert_eq!(m["execution_count"], 4);
    assert_eq!(m["inference_count"], 6, "rows");
    // One request at a time: runs of 1 row three times, then one of 3 rows.
    let sizes: Vec<(u64, u64)> = m["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["compute_input"]["count"], b["compute_infer"]["count"]);
            (
                b["batch_size"].as_u64().unwrap(),
                b["compute_infer"]["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes, vec![(1, 3), (3, 1)], "{m}");
    assert!(
        m["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    let (_, all) = s.get("/v2/models/stats");
    assert_eq!(
        all["model_stats"].as_array().unwrap().len(),
        7,
        "every ready version (minilm's too: `make minilm`)"
    );
    assert_eq!(s.get("/v2/models/mlp/versions/9/stats").0, 404);
}

#[test]
fn repository_index_load_and_unload_from_loopback() {
    let s = Server::start(&sample_models(), &[]);
    let (code, index) = s.post("/v2/repository/index", &json!({}));
    assert_eq!(code, 200);
    assert!(index
        .as_array()
        .unwrap()
        .contains(&json!({"name": "mlp", "version": "2", "state": "READY"})));
    assert_eq!(s.get("/v2/repository/index").0, 200);

    assert_eq!(
        s.post("/v2/repository/models/mlp/unload", &json!({})).0,
        200
    );
    assert_eq!(s.get("/v2/models/mlp/ready").0, 503);
    let (code, err) = s.post("/v2/models/mlp/infer", &mlp_row());
    assert_eq!(code, 503);
    assert!(err["error"].as_str().unwrap().contains("unloaded"), "{err}");
    let (_, ready) = s.post("/v2/repository/index", &json!({"ready": true}));
    assert!(!ready.to_string().contains("\"mlp\""), "{ready}");

    assert_eq!(s.post("/v2/repository/models/mlp/load", &json!({})).0, 200);
    let (code, resp) = s.post("/v2/models/mlp/infer", &mlp_row());
    assert_eq!((code, resp["model_version"].clone()), (200, json!("2")));

    let (code, err) = s.post("/v2/repository/models/nope/load", &json!({}));
    assert_eq!(code, 404, "{err}");
    let (code, _) = s.post("/v2/repository/models/..%2Fmodels/load", &json!({}));
    assert_eq!(code, 400, "a path is not a model name");
}

#[test]
fn admin_calls_need_the_token_when_one_is_set() {
    let s = Server::start_with(&sample_models(), &[], |c| {
        c.env("SWITCHYARD_ADMIN_TOKEN", "s3cret");
    });
    // On the public port, where a token makes admin calls possible.
    let unload = |auth: Option<&str>| {
        let mut r = client().post(s.public_url("/v2/repository/models/iris/unload"));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(unload(None), 401);
    assert_eq!(unload(Some("Bearer wrong")), 401);
    assert_eq!(s.get("/v2/models/iris/ready").0, 200);
    assert_eq!(unload(Some("Bearer s3cret")), 200);
    assert_eq!(s.get("/v2/models/iris/ready").0, 503);
    // Reading the index needs no token.
    assert_eq!(s.get("/v2/repository/index").0, 200);
}

/// With no admin token, admin calls are refused on the public ports (a proxy or
/// a port-forward makes every caller local) and served on the admin listener.
#[test]
fn without_a_token_admin_calls_are_served_on_the_admin_listener_only() {
    let s = Server::start(&sample_models(), &[]);
    for (method, path) in [
        (reqwest::Method::POST, "/v2/repository/models/iris/unload"),
        (reqwest::Method::PUT, "/admin/models/iris/traffic"),
        (reqwest::Method::GET, "/admin/models/iris/rollout"),
    ] {
        let r = client()
            .request(method.clone(), s.public_url(path))
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let text = r.text().unwrap();
        assert!(text.contains("admin listener (--admin"), "{text}");
    }
    assert_eq!(s.get("/v2/models/iris/ready").0, 200);
    let admin = s.admin.as_ref().expect("an admin listener");
    assert!(admin.contains("127.0.0.1"));
    assert_eq!(
        s.post("/v2/repository/models/iris/unload", &json!({})).0,
        200
    );
    assert_eq!(s.get("/v2/models/iris/ready").0, 503);
    // The admin listener serves the reads too.
    let r = client()
        .get(format!("{admin}/v2/models/iris"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// --protect-reads puts metadata, statistics, drift and the index behind the
/// API token; probes stay open; --metrics-token guards /metrics alone.
#[test]
fn protect_reads_and_the_metrics_token() {
    let s = Server::start(
        &sample_models(),
        &[
            "--api-token",
            "k",
            "--protect-reads",
            "--metrics-token",
            "m",
        ],
    );
    let get = |path: &str, token: Option<&str>| {
        let mut r = client().get(s.public_url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap().status().as_u16()
    };
    for path in [
        "/v2",
        "/v2/models/iris",
        "/v2/models/iris/config",
        "/v2/models/stats",
        "/v2/repository/index",
        "/v1/models",
    ] {
        assert_eq!(get(path, None), 401, "{path}");
        assert_eq!(get(path, Some("k")), 200, "{path}");
    }
    for path in ["/v2/health/live", "/v2/health/ready", "/ping"] {
        assert_eq!(get(path, None), 200, "{path}");
    }
    assert_eq!(get("/metrics", None), 401);
    assert_eq!(get("/metrics", Some("k")), 401);
    assert_eq!(get("/metrics", Some("m")), 200);
}
