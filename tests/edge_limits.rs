//! The edge's budgets against hostile clients: slow heads and bodies, idle
//! sockets, floods of connections, bodies that grow past their limits, and
//! gRPC length prefixes that ask for more than the server will hold. Each case
//! runs against the real binary on loopback with short deadlines.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, metric_sample, sample_models, Server};

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Reads what the server sends until it closes the socket (or `limit` passes).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

fn ready_answers(server: &Server) -> bool {
    client()
        .get(server.url("/v2/health/ready"))
        .send()
        .map(|r| r.status() == 200)
        .unwrap_or(false)
}

/// 500 sockets that send a request head one byte at a time are each closed
/// at the header deadline, an HTTP/1.1 one with a 408, while the server keeps
/// answering; a socket that sends nothing is closed too, silently.
#[test]
fn slow_heads_and_silent_sockets_are_closed_at_the_header_deadline() {
    let server = Server::start(&sample_models(), &["--header-timeout", "2s"]);
    let started = Instant::now();
    // Half GET, half POST (whose `P` must not pass for h2's preface).
    let mut slow: Vec<TcpStream> = (0..500)
        .map(|i| {
            let mut s = TcpStream::connect(addr(&server)).unwrap();
            let head: &[u8] = if i % 2 == 0 {
                b"GET /v2/health/ready HTTP/1.1\r\nHo"
            } else {
                b"POST /v2/models/mlp/infer HTTP/1.1\r\nHo"
            };
            s.write_all(head).unwrap();
            s
        })
        .collect();
    let mut silent = TcpStream::connect(addr(&server)).unwrap();
    // Keep dribbling while checking the server still answers.
    for _ in 0..3 {
        for s in &mut slow {
            let _ = s.write_all(b"s");
        }
        assert!(ready_answers(&server), "{}", server.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    for s in &mut slow {
        let (got, closed) = read_until_closed(s, Duration::from_secs(10));
        assert!(closed, "a slow head was not closed");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("--header-timeout"), "{text}");
    }
    let (got, closed) = read_until_closed(&mut silent, Duration::from_secs(10));
    assert!(closed && got.is_empty(), "{got:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert!(ready_answers(&server));
    let metrics = server.metrics_text();
    let timed_out = metric_sample(
        &metrics,
        "switchyard_connections_timed_out_total{reason=\"header\"}",
    )
    .unwrap_or(0.0);
    assert!(timed_out >= 501.0, "{timed_out}");
}

/// A keep-alive connection with nothing in flight is closed after the idle
/// timeout; one in the middle of its next head gets the header deadline.
#[test]
fn idle_keep_alive_connections_are_closed() {
    let server = Server::start(
        &sample_models(),
        &["--idle-timeout", "1s", "--header-timeout", "5s"],
    );
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    s.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "an idle connection was kept");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A body sent one byte at a time gets a 408 at the body deadline.
#[test]
fn slow_body_gets_408() {
    let server = Server::start(&sample_models(), &["--body-timeout", "1s"]);
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    s.write_all(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"in",
    )
    .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    while t.elapsed() < Duration::from_secs(10) && got.is_empty() {
        let _ = s.write_all(b" ");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(n) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            if n == 0 {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("--body-timeout"), "{text}");
}

/// A million one-byte chunks are read within the body limit and answered;
/// past the limit they get a 413, not a growing buffer.
#[test]
fn a_million_one_byte_chunks_are_answered() {
    let server = Server::start(&sample_models(), &["--max-body-bytes", "500000"]);
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    s.write_all(b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
    let chunk = b"1\r\n \r\n".repeat(10_000);
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..100 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n");
        })
    };
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(60));
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(ready_answers(&server));
}

/// Past --max-connections, new connections are closed at once and counted;
/// the ones open keep being served.
#[test]
fn connections_past_the_cap_are_closed_and_counted() {
    let server = Server::start(&sample_models(), &["--max-connections", "40"]);
    // The probe of Server::start may still be open on the client's pool:
    // measure what is free by filling up.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..80 {
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        s.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 12];
        match s.read(&mut buf) {
            Ok(12) if &buf == b"HTTP/1.1 200" => held.push(s),
            _ => refused += 1,
        }
    }
    assert!(refused >= 40, "{refused} refused, {} served", held.len());
    assert!(held.len() >= 38, "{} served", held.len());
    // A connection already open is still served.
    let s = &mut held[0];
    let mut rest = [0u8; 4096];
    let _ = s.read(&mut rest);
    s.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    drop(held);
    // Closed ones are uncounted: the server takes new connections again.
    let t = Instant::now();
    while !ready_answers(&server) {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = server.metrics_text();
    let n = metric_sample(&metrics, "switchyard_connections_refused_total").unwrap_or(0.0);
    assert!(n >= 40.0, "{n}");
}

/// JSON nested 10,000 deep is a 400 on every JSON route, not a stack overflow.
#[test]
fn deep_json_is_refused() {
    let server = Server::start(&sample_models(), &[]);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for path in [
        "/v2/models/mlp/infer",
        "/v1/models/iris:predict",
        "/invocations",
    ] {
        let r = client()
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(deep.clone())
            .send()
            .unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    let deep_obj = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let r = client()
        .post(server.url("/v2/repository/index"))
        .body(deep_obj)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(ready_answers(&server));
}

/// Routes that are not inference take 64 KiB bodies at most.
#[test]
fn control_routes_take_small_bodies() {
    let server = Server::start(&sample_models(), &[]);
    let big = format!(
        "{{\"ready\": true, \"pad\": \"{}\"}}",
        "x".repeat(100 << 10)
    );
    let r = client()
        .post(server.url("/v2/repository/index"))
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = client()
        .post(server.url("/v2/repository/index"))
        .body("{\"ready\": true}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Requests whose bodies do not fit the in-flight budget get 429 with
/// Retry-After; the budget comes back when they are answered.
#[test]
fn inflight_budget_refuses_with_429() {
    let server = Server::start(
        &sample_models(),
        &["--max-inflight-bytes", "1000", "--body-timeout", "5s"],
    );
    let body = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}], "pad": "x".repeat(2000)})).unwrap();
    let r = client()
        .post(server.url("/v2/models/iris/infer"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // A body half sent holds what it sent, which the next one cannot have.
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    // Bytes are held as they arrive: 950 of a declared 960.
    s.write_all(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 960\r\n\r\n")
        .unwrap();
    s.write_all(&[b' '; 950]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let small = serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]});
    let (code, body) = server.post("/v2/models/iris/infer", &small);
    assert_eq!(code, 429, "{body}");
    drop(s);
    let t = Instant::now();
    loop {
        let (code, _) = server.post("/v2/models/iris/infer", &small);
        if code == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{code}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An h2 connection to the gRPC port, driven frame by frame.
async fn h2_connect(server: &Server) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(server.grpc.trim_start_matches("http://"))
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn infer_request() -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri("http://x/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The grpc-status of an answer, from its headers (trailers-only) or trailers.
async fn grpc_status(resp: h2::client::ResponseFuture) -> (String, String) {
    let resp = resp.await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let pick = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|s| {
            (
                s.to_str().unwrap().to_string(),
                h.get("grpc-message")
                    .map(|m| m.to_str().unwrap().replace("%20", " "))
                    .unwrap_or_default(),
            )
        })
    };
    if let Some(s) = pick(&parts.headers) {
        return s;
    }
    while let Some(d) = body.data().await {
        let _ = d;
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    pick(&trailers).expect("no grpc-status")
}

/// A length prefix of 0xFFFFFFFF is RESOURCE_EXHAUSTED before anything is
/// reserved; many streams stalled after a large prefix hold no more than the
/// in-flight budget (the rest are refused), and the server stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_length_prefixes_are_checked_against_the_budget() {
    let server = tokio::task::spawn_blocking(|| {
        Server::start(
            &sample_models(),
            &["--max-inflight-bytes", "64MiB", "--body-timeout", "30s"],
        )
    })
    .await
    .unwrap();
    let mut send = h2_connect(&server).await;
    let (resp, mut body) = send.send_request(infer_request(), false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0xFF, 0xFF, 0xFF, 0xFF]), false)
        .unwrap();
    let (code, message) = grpc_status(resp).await;
    assert_eq!(code, "8", "{message}");

    // 40 streams each declaring 16 MiB and then stalling: four fit in 64 MiB.
    let rss_before = rss_kib(server.pid());
    let mut stalled = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut send = send.clone().ready().await.unwrap();
        let (resp, mut body) = send.send_request(infer_request(), false).unwrap();
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&(16u32 << 20).to_be_bytes());
        prefix.extend_from_slice(&[0u8; 1000]);
        body.send_data(Bytes::from(prefix), false).unwrap();
        stalled.push((resp, body));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut kept = Vec::new();
    for (resp, body) in stalled {
        match tokio::time::timeout(Duration::from_millis(200), grpc_status(resp)).await {
            Ok((code, message)) => {
                assert_eq!(code, "8", "{message}");
                assert!(message.contains("request budget"), "{message}");
                refused += 1;
            }
            Err(_) => kept.push(body),
        }
    }
    assert!(refused >= 36, "{refused}");
    let rss_after = rss_kib(server.pid());
    // Four 16 MiB reservations at most, and tonic reserves as it reads.
    assert!(
        rss_after < rss_before + 80 * 1024,
        "{rss_before} KiB -> {rss_after} KiB"
    );
    drop(kept);
    let s = &server;
    assert!(tokio::task::block_in_place(|| ready_answers(s)));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A message that stalls half-way is DEADLINE_EXCEEDED at the body deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_grpc_message_gets_deadline_exceeded() {
    let server =
        tokio::task::spawn_blocking(|| Server::start(&sample_models(), &["--body-timeout", "1s"]))
            .await
            .unwrap();
    let mut send = h2_connect(&server).await;
    let (resp, mut body) = send.send_request(infer_request(), false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 1, 0, 1, 2]), false)
        .unwrap();
    let (code, message) = tokio::time::timeout(Duration::from_secs(10), grpc_status(resp))
        .await
        .expect("no answer at the body deadline");
    assert_eq!(code, "4", "{message}");
    assert!(message.contains("--body-timeout"), "{message}");
    // A unary call whose stream stays open after its headers, or after its
    // one message, is ended at the deadline too (tonic waits for the end).
    for data in [&[][..], &[0, 0, 0, 0, 0][..]] {
        let (resp, mut body) = send.send_request(infer_request(), false).unwrap();
        if !data.is_empty() {
            body.send_data(Bytes::copy_from_slice(data), false).unwrap();
        }
        let (code, message) = tokio::time::timeout(Duration::from_secs(10), grpc_status(resp))
            .await
            .expect("no answer at the body deadline");
        assert_eq!(code, "4", "{message}");
        drop(body);
    }
}

/// A one-row request for `mixed`, length-prefixed as gRPC frames a message.
fn mixed_message() -> Vec<u8> {
    use prost::Message as _;
    use switchyard::edge::grpc::proto as pb;
    let input =
        |name: &str, dtype: &str, shape: Vec<i64>| pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: dtype.into(),
            shape,
            ..Default::default()
        };
    let tag = [&3u32.to_le_bytes()[..], b"abc"].concat();
    let msg = pb::ModelInferRequest {
        model_name: "mixed".into(),
        id: "split".into(),
        inputs: vec![
            input("features", "FP32", vec![1, 3]),
            input("counts", "INT64", vec![1, 3]),
            input("scale", "FP64", vec![]),
            input("tag", "BYTES", vec![1]),
        ],
        raw_input_contents: vec![
            Bytes::from(vec![0u8; 12]),
            Bytes::from(vec![0u8; 24]),
            Bytes::from(1.0f64.to_le_bytes().to_vec()),
            Bytes::from(tag),
        ],
        ..Default::default()
    };
    let body = msg.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

/// Sends `chunks` as the DATA frames of one ModelInfer call (the last ends
/// the stream) and returns the status and the answer's message, if any.
async fn model_infer(
    send: &mut h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    chunks: &[&[u8]],
) -> (
    String,
    String,
    Option<switchyard::edge::grpc::proto::ModelInferResponse>,
) {
    use prost::Message as _;
    let (resp, mut body) = send.send_request(request, chunks.is_empty()).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        body.send_data(Bytes::copy_from_slice(chunk), i + 1 == chunks.len())
            .unwrap();
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("no answer")
        .unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(d) = body.data().await {
        data.extend_from_slice(&d.unwrap());
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    let status = |h: &http::HeaderMap| {
        let code = h.get("grpc-status")?.to_str().unwrap().to_string();
        let message = h
            .get("grpc-message")
            .map(|m| m.to_str().unwrap().replace("%20", " "))
            .unwrap_or_default();
        Some((code, message))
    };
    let (code, message) = status(&parts.headers)
        .or_else(|| status(&trailers))
        .expect("no grpc-status");
    let answer = (data.len() > 5).then(|| {
        assert_eq!(data[0], 0, "the answer is not compressed");
        switchyard::edge::grpc::proto::ModelInferResponse::decode(&data[5..]).unwrap()
    });
    (code, message, answer)
}

/// ModelInfer read straight from the h2 frames (not through tonic): a message
/// split anywhere, even inside its length prefix, is answered; a message
/// followed by another is answered for the first (tonic's behaviour); each
/// broken call gets INVALID_ARGUMENT naming what is wrong; a compressed call
/// still goes through tonic and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_read_from_the_frames_answers_every_split_and_names_each_fault() {
    let server = tokio::task::spawn_blocking(|| Server::start(&sample_models(), &[]))
        .await
        .unwrap();
    let mut send = h2_connect(&server).await;
    let m = mixed_message();
    let splits: [&[&[u8]]; 4] = [
        &[&m],
        &[&m[..3], &m[3..9], &m[9..]],
        &[&m[..5], &m[5..], &[]],
        &[&[&m[..], &m[..]].concat()],
    ];
    for chunks in splits {
        let (code, message, answer) = model_infer(&mut send, infer_request(), chunks).await;
        assert_eq!(code, "0", "{message}");
        let answer = answer.expect("an answer message");
        assert_eq!(answer.id, "split");
        assert_eq!(answer.model_name, "mixed");
        assert!(!answer.outputs.is_empty());
    }
    let mut compressed = m.clone();
    compressed[0] = 1;
    let faults: [(&[&[u8]], &str); 5] = [
        (&[&compressed], "marked compressed"),
        (
            &[&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]],
            "failed to decode Protobuf message",
        ),
        (&[&m[..m.len() - 4]], "ended inside the request message"),
        (&[&m[..3]], "ended inside the request message"),
        (&[], "carries no request message"),
    ];
    for (chunks, says) in faults {
        let (code, message, answer) = model_infer(&mut send, infer_request(), chunks).await;
        assert_eq!(code, "3", "{says}: {message}");
        assert_eq!(message.matches(says).count(), 1, "{says}: {message}");
        assert!(answer.is_none());
    }
    // gzip: tonic's path, which inflates the message.
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&m[5..]).unwrap();
    let gz = gz.finish().unwrap();
    let mut framed = vec![1u8];
    framed.extend_from_slice(&(gz.len() as u32).to_be_bytes());
    framed.extend_from_slice(&gz);
    let mut request = infer_request();
    request
        .headers_mut()
        .insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    let (code, message, answer) = model_infer(&mut send, request, &[&framed]).await;
    assert_eq!(code, "0", "{message}");
    assert_eq!(answer.expect("an answer message").id, "split");
}

/// An h2 rapid-reset burst (streams opened and cancelled at once) ends with
/// the connection refused or served, and the server healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_burst_leaves_the_server_healthy() {
    let server = tokio::task::spawn_blocking(|| Server::start(&sample_models(), &[]))
        .await
        .unwrap();
    let send = h2_connect(&server).await;
    let mut sent = 0;
    for _ in 0..5000 {
        let Ok(mut s) = send.clone().ready().await else {
            break;
        };
        match s.send_request(infer_request(), false) {
            Ok((_, mut body)) => {
                body.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
    }
    assert!(sent > 0);
    let s = &server;
    assert!(tokio::task::block_in_place(|| ready_answers(s)));
    // gRPC still serves on a fresh connection.
    let mut fresh = h2_connect(&server).await;
    let (resp, mut body) = fresh.send_request(infer_request(), false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let (code, message) = grpc_status(resp).await;
    // An empty request names no model: the server answered it.
    assert_ne!(code, "14", "{message}");
}

/// A gzip body that inflates past the limit (100 MiB of zeros in ~100 KiB) is
/// a 413, found while inflating, not after.
#[test]
fn a_gzip_bomb_is_refused() {
    use std::io::Write as _;
    let server = Server::start(&sample_models(), &["--max-body-bytes", "1000000"]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..100 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1_000_000, "{}", bomb.len());
    let r = client()
        .post(server.url("/v2/models/mlp/infer"))
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(bomb)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(ready_answers(&server));
}
