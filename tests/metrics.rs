//! `GET /metrics`: Prometheus text with the documented names, labels and units,
//! counting what was served (and not the warm-up), and off with `--no-metrics`.

mod common;

use common::{client, metric_sample as sample, sample_models, Server};
use serde_json::json;

fn row() -> serde_json::Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": vec![0.25; 16]}]})
}

#[test]
fn metrics_count_what_was_served() {
    let s = Server::start(&sample_models(), &[]);
    for _ in 0..5 {
        assert_eq!(s.post("/v2/models/mlp/infer", &row()).0, 200);
    }
    let three = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 16], "data": vec![0.5; 48]}]});
    assert_eq!(s.post("/v2/models/mlp/infer", &three).0, 200);
    let bad = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]});
    assert_eq!(s.post("/v2/models/mlp/infer", &bad).0, 400);

    let r = client().get(s.url("/metrics")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().unwrap();
    let mlp = r#"model="mlp",version="2""#;
    assert_eq!(
        sample(
            &text,
            &format!(r#"switchyard_requests_total{{{mlp},protocol="http",code="200"}}"#)
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"switchyard_requests_total{{{mlp},protocol="http",code="400"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("switchyard_rows_total{{{mlp}}}")),
        Some(8.0),
        "warm-up not counted"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"switchyard_request_duration_seconds_count{{{mlp},protocol="http"}}"#)
        ),
        Some(7.0)
    );
    // Buckets up to 10 s, in seconds; rows in powers of two.
    assert!(
        text.contains(&format!(
            r#"switchyard_request_duration_seconds_bucket{{{mlp},protocol="http",le="10"}} 7"#
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"switchyard_batch_size_rows_bucket{{{mlp},le="4"}} 6"#
        )),
        "{text}"
    );
    assert!(text.contains("# TYPE switchyard_queue_duration_seconds histogram"));
    assert!(text.contains("# TYPE switchyard_compute_duration_seconds histogram"));
    assert_eq!(
        sample(
            &text,
            &format!(r#"switchyard_version_state{{{mlp},state="ready"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("switchyard_traffic_weight{{{mlp}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_traffic_weight{model="mlp",version="1"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, &format!("switchyard_queue_depth{{{mlp}}}")),
        Some(0.0)
    );
    assert!(sample(&text, "switchyard_process_resident_memory_bytes").unwrap() > 1e6);
    assert_eq!(sample(&text, "switchyard_load_failures_total"), Some(0.0));
}

#[test]
fn no_metrics_turns_the_endpoint_off() {
    let s = Server::start(&sample_models(), &["--no-metrics"]);
    assert_eq!(s.post("/v2/models/mlp/infer", &row()).0, 200);
    let (code, e) = s.get("/metrics");
    assert_eq!(code, 404, "{e}");
}

#[test]
fn latency_buckets_can_be_chosen() {
    let s = Server::start(&sample_models(), &["--latency-buckets", "0.001,0.5"]);
    assert_eq!(s.post("/v2/models/mlp/infer", &row()).0, 200);
    let text = s.metrics_text();
    let buckets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_request_duration_seconds_bucket{model=\"mlp\",version=\"2\",protocol=\"http\""))
        .collect();
    assert_eq!(buckets.len(), 3, "0.001, 0.5 and +Inf: {buckets:?}");
}

#[test]
fn a_metrics_port_serves_the_scrape_and_nothing_else() {
    let s = Server::start(&sample_models(), &["--metrics", "127.0.0.1:0"]);
    assert_eq!(s.post("/v2/models/mlp/infer", &row()).0, 200);
    let key = "metrics listening addr=";
    let logs = s.logs();
    let at = logs
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {logs}"));
    let addr = logs[at + key.len()..].split_whitespace().next().unwrap();
    let get = |path: &str| client().get(format!("http://{addr}{path}")).send().unwrap();
    let text = get("/metrics").text().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("switchyard_requests_total{") && l.contains("model=\"mlp\"")),
        "{text}"
    );
    let r = get("/v2/health/ready");
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("GET /metrics only"));
    let r = client()
        .post(format!("http://{addr}/metrics"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
}
