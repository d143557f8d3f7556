//! Stopping the server: SIGTERM stops the task tree top-down and nothing of it
//! is left running.

mod common;

use common::{copy_dir, sample_models, scratch, Server};
use serde_json::json;

/// The edge stops first (listeners, then open connections), then the control
/// plane, then the serving layer: the table empties and every worker thread,
/// and the drift thread of a monitored version, exits before the process does.
#[test]
fn sigterm_stops_each_layer_in_order_and_leaves_nothing_running() {
    let dir = scratch("shutdown-order");
    for m in ["mlp", "iris"] {
        copy_dir(&sample_models().join(m), &dir.join(m));
    }
    let mut server = Server::start(&dir, &["--poll-interval", "100ms"]);
    let row = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]});
    assert_eq!(server.post("/v2/models/iris/infer", &row).0, 200);
    let status = server.terminate();
    let logs = server.logs();
    assert!(status.success(), "{status}: {logs}");
    let at = |needle: &str| {
        logs.find(needle)
            .unwrap_or_else(|| panic!("no '{needle}' in the log:\n{logs}"))
    };
    let order = [
        at("shutting down"),
        at(r#"stopped layer="edge""#),
        at("control plane stopping"),
        at(r#"stopped layer="control""#),
        at(r#"stopped layer="serving""#),
        at("stopped left=0"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{logs}");
}
