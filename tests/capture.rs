//! Inference data capture against a real server: every request of a canary
//! split recorded with its answer, rotation, a full disk that drops and
//! counts without failing a request, CloudEvents to an HTTP sink with
//! KServe's headers, redaction, and a baseline made from a capture folder.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, copy_dir, metric_sample, sample_models, scratch, Server};
use serde_json::{json, Value};

/// mlp with both versions served, and `capture` as its `[capture]` table.
fn repo(name: &str, capture: &str) -> PathBuf {
    let repo = scratch(name);
    let s = sample_models();
    for v in ["1", "2"] {
        copy_dir(&s.join("mlp").join(v), &repo.join("mlp").join(v));
    }
    std::fs::write(
        repo.join("mlp/config.toml"),
        format!("[version_policy]\nall = true\n\n[capture]\n{capture}\n"),
    )
    .unwrap();
    repo
}

/// Request `n`'s one row: distinct per request, so a record matches its request.
fn row(n: usize) -> Vec<f32> {
    (0..16).map(|i| ((n * 16 + i) % 97) as f32 / 97.0).collect()
}

fn request(n: usize) -> Value {
    json!({"id": format!("r-{n}"), "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": row(n)}]})
}

/// The trace id request `n` carries in its `traceparent`: even ones only.
fn trace_of(n: usize) -> Option<String> {
    (n % 2 == 0).then(|| format!("{:032x}", n + 1))
}

/// Sends requests `0..n` unversioned; each answer by id.
fn send(s: &Server, n: usize) -> BTreeMap<String, Value> {
    let c = client();
    (0..n)
        .map(|i| {
            let mut r = c
                .post(s.public_url("/v2/models/mlp/infer"))
                .json(&request(i));
            if let Some(t) = trace_of(i) {
                r = r.header("traceparent", format!("00-{t}-00f067aa0ba902b7-01"));
            }
            let r = r.send().unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().unwrap();
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Every record in the capture files under `dir`, and the files' names.
fn records(dir: &Path) -> (Vec<Value>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".jsonl.gz") && !name.starts_with('.'),
            "only whole files once the server stopped: {name}"
        );
        let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(f).unwrap());
        for line in BufReader::new(gz).lines() {
            out.push(serde_json::from_str(&line.unwrap()).unwrap());
        }
    }
    (out, files)
}

#[test]
fn every_request_of_a_canary_split_is_recorded_with_its_answer() {
    let dir = scratch("capture_every").join("capture");
    let models = repo(
        "capture_every_models",
        &format!("dir = {:?}\nmax_file_bytes = 20000", dir.to_str().unwrap()),
    );
    let mut s = Server::start(&models, &["--shutdown-delay", "0s"]);
    let (code, _) = s.put_json(
        "/admin/models/mlp/traffic",
        &json!({"weights": {"1": 70, "2": 30}}),
    );
    assert_eq!(code, 200);
    let answers = send(&s, 300);
    // Stopping closes the files: the last one gets its final name.
    assert!(s.terminate().success());

    let (records, files) = records(&dir);
    assert_eq!(records.len(), 300, "one record a request");
    // They hold what clients sent: the server's user's only.
    use std::os::unix::fs::PermissionsExt;
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f:?}");
    }
    let folder = std::fs::metadata(files[0].parent().unwrap()).unwrap();
    assert_eq!(folder.permissions().mode() & 0o777, 0o700);
    for v in ["1", "2"] {
        let n = files
            .iter()
            .filter(|f| f.parent().unwrap().ends_with(v))
            .count();
        assert!(n >= 2, "version {v}: 20 kB files rotate: {files:?}");
    }
    for r in &records {
        let id = r["id"].as_str().unwrap();
        let answer = &answers[id];
        let n: usize = id[2..].parse().unwrap();
        assert_eq!(r["model"], "mlp");
        assert_eq!(r["version"], answer["model_version"], "{id}");
        assert_eq!(
            (&r["role"], &r["routing"]),
            (&json!("primary"), &json!("weighted"))
        );
        assert_eq!(
            (&r["status"], &r["protocol"]),
            (&json!("ok"), &json!("http"))
        );
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(r["inputs"][0]["shape"], json!([1, 16]));
        let sent: Vec<f64> = row(n).iter().map(|x| *x as f64).collect();
        let kept: Vec<f64> = r["inputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        // Written as briefly as an f32 prints: equal once read back as f32.
        assert!(
            sent.iter().zip(&kept).all(|(a, b)| *a as f32 == *b as f32),
            "{id}"
        );
        assert_eq!(r["outputs"], answer["outputs"], "{id}");
        assert_eq!(r["trace_id"].as_str(), trace_of(n).as_deref(), "{id}");
    }
    let by_version = records.iter().filter(|r| r["version"] == "1").count();
    assert!(
        (150..270).contains(&by_version),
        "70/30 of 300: {by_version}"
    );
}

#[test]
fn a_sample_rate_of_zero_records_nothing_and_redaction_holds() {
    let dir = scratch("capture_redact").join("capture");
    let models = repo(
        "capture_redact_models",
        &format!(
            "dir = {:?}\nrecord = \"both\"\ndrop_inputs = [\"input\"]",
            dir.to_str().unwrap()
        ),
    );
    let mut s = Server::start(&models, &["--shutdown-delay", "0s"]);
    send(&s, 20);
    assert!(s.terminate().success());
    let (records, _) = records(&dir);
    assert_eq!(records.len(), 20);
    assert!(records.iter().all(|r| r["inputs"] == json!([])), "dropped");
    assert!(records.iter().all(|r| r["outputs"][0]["name"] == "output"));

    // A BYTES-only rule on a numeric input is refused at load, named.
    let bad = repo(
        "capture_hash_models",
        "dir = \"/tmp/x\"\nhash_inputs = [\"input\"]",
    );
    let s = Server::start(&bad, &[]);
    let (_, index) = s.post("/v2/repository/index", &json!({}));
    let reasons = index.to_string();
    assert!(reasons.contains("not a BYTES input"), "{reasons}");

    let off = repo(
        "capture_off_models",
        &format!("dir = {:?}\nsample_rate = 0.0", dir.to_str().unwrap()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mut s = Server::start(&off, &["--shutdown-delay", "0s"]);
    send(&s, 20);
    assert!(s.terminate().success());
    assert!(!dir.exists(), "rate 0 is capture off");
}

#[test]
fn a_full_disk_drops_and_counts_and_every_request_is_answered() {
    let root = scratch("capture_full");
    let dir = root.join("small");
    std::fs::create_dir_all(&dir).unwrap();
    // A 64 KiB tmpfs in a mount namespace of the server's own: root mounts
    // one; elsewhere a user namespace lets an ordinary user do it.
    let flag = if is_root() { "-m" } else { "-rm" };
    let probe = std::process::Command::new("unshare")
        .args([flag, "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!(
            "SKIPPED: `unshare {flag}` is not allowed here, so no small tmpfs can be mounted"
        );
        return;
    }
    let models = repo(
        "capture_full_models",
        &format!("dir = {:?}\nmax_file_bytes = 4000", dir.to_str().unwrap()),
    );
    let script = "mount -t tmpfs -o size=64k tmpfs \"$0\" && exec \"$@\"";
    let s = Server::start_in(
        &["unshare", flag, "sh", "-c", script, dir.to_str().unwrap()],
        &models,
        &[],
        |_| {},
    );
    // Each request's record is about 500 bytes: 2000 of them fill 64 KiB of
    // gzip files many times over.
    let c = client();
    for i in 0..2000 {
        let r = c
            .post(s.public_url("/v2/models/mlp/infer"))
            .json(&request(i))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = s.metrics_text();
        let dropped: f64 = ["1", "2"]
            .iter()
            .filter_map(|v| {
                metric_sample(
                    &text,
                    &format!(
                        "switchyard_capture_dropped_total{{model=\"mlp\",version=\"{v}\",reason=\"write_failed\"}}"
                    ),
                )
            })
            .sum();
        if dropped > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no drop counted:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_root() -> bool {
    // The uid as `id -u` prints it: no libc call needed.
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// One HTTP request a sink received: its headers (lower-case) and body.
type Event = (BTreeMap<String, String>, Value);

/// A minimal HTTP server that answers 200 to everything and keeps what it got.
fn sink() -> (String, Arc<Mutex<Vec<Event>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut headers = BTreeMap::new();
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap();
                        headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
                    }
                    let len: usize = headers["content-length"].parse().unwrap();
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    keep.lock()
                        .unwrap()
                        .push((headers, serde_json::from_slice(&body).unwrap()));
                    w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (url, got)
}

#[test]
fn cloudevents_reach_an_http_sink_with_kserves_headers() {
    let (url, got) = sink();
    let models = repo("capture_sink_models", &format!("sink = {url:?}"));
    let s = Server::start(&models, &[]);
    let answers = send(&s, 10);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < 20 {
        assert!(
            Instant::now() < deadline,
            "{} events",
            got.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let events = got.lock().unwrap().clone();
    assert_eq!(events.len(), 20, "a request and a response event each");
    for (h, body) in &events {
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-component"], "predictor");
        assert_eq!(
            h["ce-source"],
            format!("/switchyard/mlp/{}", h["ce-endpoint"])
        );
        assert!(h["ce-time"].ends_with('Z'), "{h:?}");
        assert_eq!(h["ce-inferenceservicename"], "mlp");
        assert_eq!(h["content-type"], "application/json");
        let id = &h["ce-id"];
        assert_eq!(body["id"], *id);
        let n: usize = id[2..].parse().unwrap();
        let traceparent = trace_of(n).map(|t| format!("00-{t}-00f067aa0ba902b7-01"));
        assert_eq!(h.get("ce-traceparent"), traceparent.as_ref(), "{id}");
        match h["ce-type"].as_str() {
            "org.kubeflow.serving.inference.request" => {
                assert_eq!(body["inputs"][0]["shape"], json!([1, 16]));
            }
            "org.kubeflow.serving.inference.response" => {
                assert_eq!(body["outputs"], answers[id]["outputs"]);
                assert_eq!(body["model_version"], answers[id]["model_version"]);
            }
            other => panic!("ce-type {other}"),
        }
    }
}

/// Captures 200 requests to mlp version 1 in `format`; the version's folder.
fn capture_rows(name: &str, format: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(name).join("capture");
    let models = repo(
        &format!("{name}_models"),
        &format!("dir = {:?}\nformat = {format:?}", dir.to_str().unwrap()),
    );
    let mut s = Server::start(&models, &["--shutdown-delay", "0s"]);
    let c = client();
    for i in 0..200 {
        let r = c
            .post(s.public_url("/v2/models/mlp/versions/1/infer"))
            .json(&request(i))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(s.terminate().success());
    (dir.join("mlp/1"), models.join("mlp/1"))
}

#[test]
fn a_capture_folder_profiles_as_the_same_rows_in_a_csv() {
    let (jsonl, version) = capture_rows("capture_profile", "jsonl");
    let (parquet, _) = capture_rows("capture_profile_pq", "parquet");
    // The same rows as a CSV whose header names the columns as a capture
    // folder does (it has no names of its own).
    let csv = scratch("capture_profile_csv").join("rows.csv");
    let mut text = (0..16)
        .map(|k| format!("input[{k}]"))
        .collect::<Vec<_>>()
        .join(",");
    text.push('\n');
    for i in 0..200 {
        let r: Vec<String> = row(i).iter().map(|x| format!("{x}")).collect();
        text.push_str(&r.join(","));
        text.push('\n');
    }
    std::fs::write(&csv, text).unwrap();
    let profile = |data: &Path, out: &Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["profile", "--model"])
            .arg(&version)
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str::<Value>(&std::fs::read_to_string(out).unwrap()).unwrap()
    };
    let out = csv.parent().unwrap();
    let from_csv = profile(&csv, &out.join("csv.json"));
    let from_jsonl = profile(&jsonl, &out.join("jsonl.json"));
    let from_parquet = profile(&parquet, &out.join("parquet.json"));
    assert_eq!(from_jsonl["rows"], 200);
    assert_eq!(from_jsonl, from_csv);
    assert_eq!(from_parquet, from_csv);
}
