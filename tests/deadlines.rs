//! A request whose timeout passes while it waits in the queue is answered 504
//! without being computed.

mod common;

use common::{sample_models, Server};
use serde_json::{json, Value};

fn mixed(rows: usize, timeout_us: Option<u64>) -> Value {
    let mut body = json!({"inputs": [
        {"name": "features", "datatype": "FP32", "shape": [rows, 3], "data": vec![0.5; rows * 3]},
        {"name": "counts", "datatype": "INT64", "shape": [rows, 3], "data": vec![1; rows * 3]},
        {"name": "scale", "datatype": "FP64", "shape": [], "data": [1.0]},
        {"name": "tag", "datatype": "BYTES", "shape": [rows], "data": vec!["t"; rows]}
    ]});
    if let Some(t) = timeout_us {
        body["parameters"] = json!({ "timeout": t });
    }
    body
}

#[test]
fn a_request_that_times_out_in_the_queue_is_504_and_not_computed() {
    let s = Server::start(&sample_models(), &[]);
    // `mixed` has no batch dimension: one request per run, so a small request
    // queued behind a large one waits for all of it.
    let base = s.base.clone();
    let big = std::thread::spawn(move || {
        common::client()
            .post(format!("{base}/v2/models/mixed/infer"))
            .json(&mixed(400_000, None))
            .send()
            .unwrap()
            .status()
            .as_u16()
    });
    // Wait until the large request is being computed.
    let started = std::time::Instant::now();
    loop {
        let (_, st) = s.get("/v2/models/mixed/stats");
        if st["model_stats"][0]["inference_stats"]["queue"]["count"] == 1 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "the large request never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let (code, e) = s.post("/v2/models/mixed/infer", &mixed(1, Some(1000)));
    assert_eq!(big.join().unwrap(), 200);
    assert_eq!(code, 504, "{e}");
    assert!(e["error"].as_str().unwrap().contains("not computed"), "{e}");
    let (_, st) = s.get("/v2/models/mixed/stats");
    assert_eq!(
        st["model_stats"][0]["execution_count"], 1,
        "only the large one ran"
    );

    let (code, e) = s.post(
        "/v2/models/mixed/infer",
        &mixed(1, None)
            .as_object()
            .cloned()
            .map(|mut o| {
                o.insert("parameters".into(), json!({"timeout": "soon"}));
                Value::Object(o)
            })
            .unwrap(),
    );
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("microseconds"), "{e}");
    // Timeout 0 is no timeout, as in Triton.
    assert_eq!(s.post("/v2/models/mixed/infer", &mixed(1, Some(0))).0, 200);
}
