//! `switchyard-loadtest`: drives a KServe V2 server over HTTP (JSON or binary
//! tensors) or gRPC, closed loop (N clients back to back) or open loop (a fixed
//! rate, each latency measured from the request's intended send time so that
//! queueing is not hidden by coordinated omission), and reports throughput,
//! percentiles from an HDR histogram, and errors by status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use switchyard::edge::grpc::proto as pb;
use switchyard::edge::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// V2 JSON over HTTP/1.1.
    Http,
    /// V2 over HTTP/1.1 with Triton's binary tensor extension.
    HttpBinary,
    /// gRPC with raw_input_contents.
    Grpc,
}

#[derive(Parser, Debug)]
#[command(name = "switchyard-loadtest", version, about)]
struct Args {
    /// HTTP base URL (metadata is always read over HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// gRPC URL, for --protocol grpc.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    grpc_url: String,
    #[arg(long, value_enum, default_value = "http")]
    protocol: Protocol,
    #[arg(long)]
    model: String,
    /// Rows per request (the batch dim of every input).
    #[arg(long, default_value_t = 1)]
    rows: i64,
    /// Closed loop: this many clients, each sending its next request on an answer.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// gRPC: HTTP/2 connections the clients share, their requests multiplexed as
    /// streams (a gRPC channel is shared so in most client libraries). Default:
    /// one per client. HTTP/1.1 always uses one per client.
    #[arg(long)]
    connections: Option<usize>,
    /// Open loop: requests per second, sent on schedule whatever the answers do.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds sent before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// A V2 JSON request body to send instead of random inputs from the metadata
    /// (HTTP JSON only).
    #[arg(long)]
    input_file: Option<std::path::PathBuf>,
    /// Texts for BYTES inputs, one per line (for text encoders): request k takes
    /// `--rows` lines from line k on, so the lengths vary as the file's do.
    /// Without it every BYTES element is "x".
    #[arg(long)]
    texts: Option<std::path::PathBuf>,
    /// Threads of the load generator (1: everything on one thread, so that on a
    /// small machine the server keeps the other cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One input as the metadata declares it, with the shape to send.
struct Input {
    name: String,
    datatype: String,
    shape: Vec<i64>,
}

/// Deterministic filler values (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// Element values of one input, as JSON and as raw little-endian bytes.
fn values(
    i: &Input,
    rng: &mut Rng,
    texts: &mut dyn Iterator<Item = &str>,
) -> anyhow::Result<(Value, Vec<u8>)> {
    let n: i64 = i.shape.iter().product();
    let mut raw = Vec::new();
    let mut vals = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let x = rng.unit();
        match i.datatype.as_str() {
            "FP32" => {
                raw.extend_from_slice(&(x as f32).to_le_bytes());
                vals.push(json!(x as f32));
            }
            "FP64" => {
                raw.extend_from_slice(&x.to_le_bytes());
                vals.push(json!(x));
            }
            "INT64" => {
                let v = (x * 100.0) as i64;
                raw.extend_from_slice(&v.to_le_bytes());
                vals.push(json!(v));
            }
            "INT32" => {
                let v = (x * 100.0) as i32;
                raw.extend_from_slice(&v.to_le_bytes());
                vals.push(json!(v));
            }
            "BOOL" => {
                raw.push((x > 0.0) as u8);
                vals.push(json!(x > 0.0));
            }
            "BYTES" => {
                let t = texts.next().unwrap_or("x");
                raw.extend_from_slice(&(t.len() as u32).to_le_bytes());
                raw.extend_from_slice(t.as_bytes());
                vals.push(json!(t));
            }
            other => bail!(
                "input '{}': datatype {other} is not generated; use --input-file",
                i.name
            ),
        }
    }
    Ok((Value::Array(vals), raw))
}

/// The request, prepared once in the form the protocol sends.
#[derive(Clone)]
enum Payload {
    Http {
        body: Bytes,
        json_len: Option<usize>,
    },
    Grpc(pb::ModelInferRequest),
}

async fn metadata(args: &Args) -> anyhow::Result<Vec<Input>> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("{}/v2/models/{}", args.url, args.model);
    let resp = client
        .request(http::Request::get(&uri).body(Full::new(Bytes::new()))?)
        .await
        .with_context(|| format!("GET {uri}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("GET {uri}: {status} {}", String::from_utf8_lossy(&body));
    }
    let meta: Value = serde_json::from_slice(&body)?;
    let inputs = meta["inputs"]
        .as_array()
        .context("metadata has no inputs")?;
    inputs
        .iter()
        .map(|i| {
            let shape = i["shape"]
                .as_array()
                .context("input without shape")?
                .iter()
                .enumerate()
                .map(|(k, d)| match d.as_i64() {
                    Some(-1) if k == 0 => args.rows,
                    Some(-1) => 1,
                    Some(d) => d,
                    None => 1,
                })
                .collect();
            Ok(Input {
                name: i["name"].as_str().unwrap_or_default().to_string(),
                datatype: i["datatype"].as_str().unwrap_or_default().to_string(),
                shape,
            })
        })
        .collect()
}

/// The requests to send, prepared once: one, or one per line of `--texts`.
async fn payloads(args: &Args) -> anyhow::Result<Vec<Payload>> {
    if let Some(f) = &args.input_file {
        if args.protocol != Protocol::Http {
            bail!("--input-file takes a V2 JSON body: use --protocol http");
        }
        let body = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(vec![Payload::Http {
            body: body.into(),
            json_len: None,
        }]);
    }
    let inputs = metadata(args).await?;
    let lines: Vec<String> = match &args.texts {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..lines.len().max(1))
        .map(|k| {
            let mut texts = lines.iter().cycle().skip(k).map(String::as_str);
            let generated = inputs
                .iter()
                .map(|i| values(i, &mut rng, &mut texts))
                .collect::<anyhow::Result<Vec<_>>>()?;
            payload(args, &inputs, generated)
        })
        .collect()
}

fn payload(
    args: &Args,
    inputs: &[Input],
    generated: Vec<(Value, Vec<u8>)>,
) -> anyhow::Result<Payload> {
    Ok(match args.protocol {
        Protocol::Http => {
            let ins: Vec<Value> = inputs
                .iter()
                .zip(&generated)
                .map(|(i, (v, _))| json!({"name": i.name, "datatype": i.datatype, "shape": i.shape, "data": v}))
                .collect();
            Payload::Http {
                body: serde_json::to_vec(&json!({ "inputs": ins }))?.into(),
                json_len: None,
            }
        }
        Protocol::HttpBinary => {
            let ins: Vec<Value> = inputs
                .iter()
                .zip(&generated)
                .map(|(i, (_, raw))| {
                    json!({"name": i.name, "datatype": i.datatype, "shape": i.shape,
                           "parameters": {"binary_data_size": raw.len()}})
                })
                .collect();
            let mut body = serde_json::to_vec(&json!({
                "inputs": ins, "parameters": {"binary_data_output": true}}))?;
            let json_len = body.len();
            for (_, raw) in &generated {
                body.extend_from_slice(raw);
            }
            Payload::Http {
                body: body.into(),
                json_len: Some(json_len),
            }
        }
        Protocol::Grpc => Payload::Grpc(pb::ModelInferRequest {
            model_name: args.model.clone(),
            inputs: inputs
                .iter()
                .map(|i| pb::model_infer_request::InferInputTensor {
                    name: i.name.clone(),
                    datatype: i.datatype.clone(),
                    shape: i.shape.clone(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: generated.into_iter().map(|(_, raw)| raw.into()).collect(),
            ..Default::default()
        }),
    })
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One connection's worth of client.
#[derive(Clone)]
enum Conn {
    Http(HttpClient, String),
    Grpc(GrpcInferenceServiceClient<tonic::transport::Channel>),
}

impl Conn {
    async fn new(args: &Args) -> anyhow::Result<Conn> {
        Ok(match args.protocol {
            Protocol::Grpc => {
                let c = GrpcInferenceServiceClient::connect(args.grpc_url.clone())
                    .await
                    .with_context(|| format!("connecting to {}", args.grpc_url))?;
                Conn::Grpc(
                    c.max_decoding_message_size(usize::MAX)
                        .max_encoding_message_size(usize::MAX),
                )
            }
            _ => Conn::Http(
                Client::builder(TokioExecutor::new()).build_http(),
                format!("{}/v2/models/{}/infer", args.url, args.model),
            ),
        })
    }

    /// Sends one request; `Err` carries the status to count it under.
    async fn send(&mut self, p: &Payload) -> Result<(), String> {
        match (self, p) {
            (Conn::Http(c, uri), Payload::Http { body, json_len }) => {
                let mut req =
                    http::Request::post(uri.as_str()).header("content-type", "application/json");
                if let Some(n) = json_len {
                    req = req.header("inference-header-content-length", n.to_string());
                }
                let req = req
                    .body(Full::new(body.clone()))
                    .map_err(|e| e.to_string())?;
                let resp = c
                    .request(req)
                    .await
                    .map_err(|e| format!("transport: {e}"))?;
                let status = resp.status();
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("transport: {e}"))?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", status.as_u16()))
                }
            }
            (Conn::Grpc(c), Payload::Grpc(m)) => c
                .model_infer(m.clone())
                .await
                .map(|_| ())
                .map_err(|s| format!("gRPC {:?}", s.code())),
            _ => Err("protocol and payload disagree".into()),
        }
    }
}

/// What the measured window saw.
struct Tally {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            // 1 µs to 60 s, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                let _ = self.hist.record((latency.as_micros() as u64).max(1));
            }
            Err(e) => *self.errors.entry(e).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.hist.add(&other.hist);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// Connections to open for `clients` clients.
fn connections(args: &Args, clients: usize) -> usize {
    match (args.protocol, args.connections) {
        (Protocol::Grpc, Some(n)) => n.clamp(1, clients),
        _ => clients,
    }
}

async fn closed_loop(
    args: &Args,
    payloads: Arc<Vec<Payload>>,
    start: Instant,
    end: Instant,
) -> anyhow::Result<Tally> {
    let mut conns = Vec::new();
    for _ in 0..connections(args, args.concurrency) {
        conns.push(Conn::new(args).await?);
    }
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let mut conn = conns[i % conns.len()].clone();
        let payloads = payloads.clone();
        let clients = args.concurrency;
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            // Clients take turns through the payloads, never two on the same one.
            let mut k = i;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return t;
                }
                let outcome = conn.send(&payloads[k % payloads.len()]).await;
                if sent >= start {
                    t.record(sent.elapsed(), outcome);
                }
                k += clients;
            }
        }));
    }
    let mut total = Tally::new();
    for t in tasks {
        total.merge(t.await?);
    }
    Ok(total)
}

/// Sleeps until `t`. tokio's timer ticks in milliseconds, so the last stretch is
/// spent yielding to the requests in flight (on the default one-thread runtime
/// that keeps the load generator's core busy, and no other); a request sent late
/// counts its lateness as latency. A separate timer thread was tried: waking the
/// runtime from it added ~300 µs per request on this VM.
async fn wait_until(t: Instant) {
    let slack = Duration::from_millis(2);
    if let Some(far) = t
        .checked_duration_since(Instant::now())
        .filter(|d| *d > slack)
    {
        tokio::time::sleep(far - slack).await;
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

async fn open_loop(
    args: &Args,
    payloads: Arc<Vec<Payload>>,
    rate: f64,
    start: Instant,
    end: Instant,
) -> anyhow::Result<Tally> {
    if rate <= 0.0 {
        bail!("--rate must be positive");
    }
    // A fixed set of connections the scheduled requests take turns on, as wrk2
    // does. An HTTP/1.1 connection carries one request at a time, so a request
    // whose connection is busy waits for it (its wait counts as latency): the
    // client's pool would otherwise open a connection per late request, and an
    // overloaded server would face thousands (seen: the server out of file
    // descriptors at 20k/s on two cores). gRPC multiplexes streams instead.
    let mut conns = Vec::new();
    for _ in 0..args.concurrency.max(16) {
        conns.push(Arc::new(tokio::sync::Mutex::new(Conn::new(args).await?)));
    }
    let tally = Arc::new(Mutex::new(Tally::new()));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let begin = Instant::now();
    let mut handles = Vec::new();
    for k in 0u64.. {
        // The intended send time: latency counts from here, not from when a
        // busy client got round to sending.
        let intended = begin + interval.mul_f64(k as f64);
        if intended >= end {
            break;
        }
        wait_until(intended).await;
        let conn = conns[k as usize % conns.len()].clone();
        let payloads = payloads.clone();
        let tally = tally.clone();
        handles.push(tokio::spawn(async move {
            let payload = &payloads[k as usize % payloads.len()];
            let mut held = conn.lock().await;
            let outcome = if let Conn::Grpc(c) = &*held {
                let mut c = Conn::Grpc(c.clone());
                drop(held);
                c.send(payload).await
            } else {
                held.send(payload).await
            };
            if intended >= start {
                tally
                    .lock()
                    .expect("no panics while held")
                    .record(intended.elapsed(), outcome);
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    Ok(Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("requests still running"))?
        .into_inner()
        .expect("no panics while held"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let payloads = Arc::new(payloads(&args).await?);
    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = start + Duration::from_secs_f64(args.duration);
    let tally = match args.rate {
        Some(r) => open_loop(&args, payloads, r, start, end).await?,
        None => closed_loop(&args, payloads, start, end).await?,
    };
    let h = &tally.hist;
    let ok = h.len();
    let errors: u64 = tally.errors.values().sum();
    let per_s = ok as f64 / args.duration;
    let p = |q: f64| h.value_at_quantile(q);
    let mode = match args.rate {
        Some(r) => format!("rate={r}/s"),
        None => format!("c={}", args.concurrency),
    };
    if args.json {
        println!(
            "{}",
            json!({
                "tool": "switchyard-loadtest", "protocol": format!("{:?}", args.protocol).to_lowercase(),
                "model": args.model, "rows": args.rows, "concurrency": args.concurrency, "connections": connections(&args, args.concurrency), "rate": args.rate,
                "duration_s": args.duration, "infer_per_s": per_s, "ok": ok, "errors": errors,
                "errors_by_status": tally.errors, "p50_us": p(0.5), "p90_us": p(0.9), "p99_us": p(0.99),
                "p999_us": p(0.999), "max_us": h.max(), "mean_us": h.mean(),
            })
        );
    } else {
        println!(
            "{:?} {} {mode} rows={}: {per_s:.1} infer/s  p50 {}us p90 {}us p99 {}us p99.9 {}us  ok={ok} errors={errors} {:?}",
            args.protocol, args.model, args.rows, p(0.5), p(0.9), p(0.99), p(0.999), tally.errors
        );
    }
    if ok == 0 {
        bail!("no request succeeded: {:?}", tally.errors);
    }
    Ok(())
}
