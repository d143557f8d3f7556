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
    let mut server = Server::start(
        &dir,
        &["--poll-interval", "100ms", "--shutdown-delay", "200ms"],
    );
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

/// SIGTERM under load: 32 clients keep calling, some with bodies still
/// uploading when the listeners close. Readiness turns 503 at once, every
/// request the server received is answered, new connections are refused after
/// the shutdown delay, and the process exits 0 within the budget.
#[test]
fn sigterm_under_load_answers_every_request_in_flight() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let dir = scratch("shutdown-load");
    copy_dir(&sample_models().join("iris"), &dir.join("iris"));
    let mut server = Server::start(
        &dir,
        &["--shutdown-delay", "1s", "--shutdown-timeout", "10s"],
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    let body = serde_json::to_vec(&json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]})).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, refused, lost, reset) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut clients = Vec::new();
    for i in 0..32 {
        let (addr, body, stop) = (addr.clone(), body.clone(), stop.clone());
        let (answered, refused, lost, reset) = (
            answered.clone(),
            refused.clone(),
            lost.clone(),
            reset.clone(),
        );
        clients.push(std::thread::spawn(move || {
            // A quarter of the clients upload slowly: their bodies are still
            // arriving when the listeners close.
            let slow = i % 4 == 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let head = format!(
                    "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                // Keep-alive: up to 50 requests on one connection, until the
                // server says `connection: close`.
                for nth in 0..50 {
                    let sent = if slow {
                        let half = body.len() / 2;
                        s.write_all(head.as_bytes())
                            .and_then(|_| s.write_all(&body[..half]))
                            .map(|_| std::thread::sleep(Duration::from_millis(700)))
                            .and_then(|_| s.write_all(&body[half..]))
                    } else {
                        s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body))
                    };
                    if sent.is_err() {
                        // Closed before the request was taken: never received.
                        refused.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    let complete = loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break false,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        let text = String::from_utf8_lossy(&got);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len: usize = text[..end]
                                .lines()
                                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
                                .unwrap_or(0);
                            if got.len() >= end + 4 + len {
                                break true;
                            }
                        }
                    };
                    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if complete && text.starts_with("http/1.1 200") {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else if nth == 0 && got.is_empty() && !slow {
                        // A connection the kernel completed as the listener
                        // closed, never accepted: the backlog is shrunk to
                        // one before the close, so at most one per listener.
                        reset.fetch_add(1, Ordering::Relaxed);
                        break;
                    } else {
                        eprintln!("lost: slow={slow} request {nth} of its connection {text:?}");
                        lost.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    if text.contains("connection: close") {
                        break;
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(800));
    let before = answered.load(Ordering::Relaxed);
    assert!(before > 0, "{}", server.logs());
    let signalled = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // Readiness is 503 during the delay, while inference still answers.
    std::thread::sleep(Duration::from_millis(200));
    let ready = common::client()
        .get(server.public_url("/v2/health/ready"))
        .send()
        .unwrap();
    assert_eq!(ready.status(), 503);
    let mid = answered.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        answered.load(Ordering::Relaxed) > mid,
        "served during the delay"
    );
    // After the delay, new connections are refused.
    let t = Instant::now();
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(t.elapsed() < Duration::from_secs(5), "still accepting");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = server.wait();
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let logs = server.logs();
    assert!(status.success(), "{status}: {logs}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(lost.load(Ordering::Relaxed), 0, "{logs}");
    assert!(reset.load(Ordering::Relaxed) <= 1, "{logs}");
    eprintln!(
        "answered {}, refused {} (never received), reset in the backlog {}, SIGTERM to exit {took:?}",
        answered.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        reset.load(Ordering::Relaxed)
    );
}

/// A stop during the first load does not wait for it: here the registry
/// never answers, and SIGTERM still ends the process within seconds.
#[test]
fn sigterm_during_the_first_load_exits_promptly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    // A tracking server that accepts and never answers.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}", mute.local_addr().unwrap());
    let cache = scratch("shutdown-first-load");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--mlflow-uri", &uri, "--cache-dir"])
        .arg(&cache)
        .args([
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--admin",
            "off",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Up and listening, the first listing hanging.
    for line in lines.by_ref() {
        if line.unwrap().contains("gRPC listening") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    std::thread::spawn(move || lines.for_each(drop));
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("SIGTERM to exit during the first load: {:?}", t.elapsed());
    drop(mute);
}
