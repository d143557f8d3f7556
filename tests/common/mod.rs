//! A real `switchyard serve` process on an ephemeral port, for the integration tests.
#![allow(dead_code)]

pub mod etcd;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub base: String,
    /// `http://ADDR` of the admin listener, unless the test turned it off.
    pub admin: Option<String>,
    /// `http://ADDR` of the gRPC listener.
    pub grpc: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample_models() -> PathBuf {
    repo_root().join("models")
}

impl Server {
    /// Starts the server on `models` with extra flags and waits until it is ready.
    pub fn start(models: &Path, extra: &[&str]) -> Server {
        Self::start_with(models, extra, |_| {})
    }

    pub fn start_with(models: &Path, extra: &[&str], env: impl FnOnce(&mut Command)) -> Server {
        Self::start_in(&[], models, extra, env)
    }

    /// Starts the server as the last arguments of `wrapper` (a command that
    /// execs its arguments, such as `unshare`), which may be empty.
    pub fn start_in(
        wrapper: &[&str],
        models: &Path,
        extra: &[&str],
        env: impl FnOnce(&mut Command),
    ) -> Server {
        let bin = env!("CARGO_BIN_EXE_switchyard");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--models"])
            .arg(models)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Tests run side by side: an ephemeral admin port, not 8003.
        let admin_flag = extra.iter().position(|a| *a == "--admin");
        if admin_flag.is_none() {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        let admin_expected = admin_flag.is_none_or(|i| extra.get(i + 1) != Some(&"off"));
        env(&mut cmd);
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    for proto in ["HTTP", "gRPC", "admin"] {
                        let key = format!("{proto} listening addr=");
                        if let Some(i) = line.find(&key) {
                            let addr = line[i + key.len()..].split_whitespace().next().unwrap();
                            let _ = tx.send((proto, addr.to_string()));
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let (mut http, mut grpc, mut admin) = (None, None, None);
        while http.is_none() || grpc.is_none() || (admin_expected && admin.is_none()) {
            let (proto, addr) = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
            match proto {
                "HTTP" => http = Some(addr),
                "gRPC" => grpc = Some(addr),
                _ => admin = Some(format!("http://{addr}")),
            }
        }
        let server = Server {
            child,
            base: format!("http://{}", http.unwrap()),
            admin,
            grpc: format!("http://{}", grpc.unwrap()),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = client().get(server.url("/v2/health/ready")).send() {
                if r.status() == 200 {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server not ready: {:?}", server.log.lock().unwrap());
    }

    /// The URL of `path`: admin calls go to the admin listener, as an
    /// operator's would, the rest to the HTTP port.
    pub fn url(&self, path: &str) -> String {
        let admin = path.starts_with("/admin/") || path.starts_with("/v2/repository/models/");
        match &self.admin {
            Some(base) if admin => format!("{base}{path}"),
            _ => self.public_url(path),
        }
    }

    /// The URL of `path` on the HTTP port, whatever it is.
    pub fn public_url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = client().get(self.url(path)).send().unwrap();
        status_json(r)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap())
    }

    pub fn put_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = client().put(self.url(path)).json(body).send().unwrap();
        status_json(r)
    }

    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let r = client().post(self.url(path)).body(body).send().unwrap();
        status_json(r)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits up to a minute for the process to end.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.wait()
    }

    /// Waits up to a minute for the process to end.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The log reader sees the last lines after the process ends.
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(Instant::now() < deadline, "still running: {}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn status_json(r: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, v)
}

impl Server {
    /// The Prometheus text of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }
}

/// The value of the sample `name{labels}` (labels in the exposition's order).
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the target dir, removed first if it exists.
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// One unary ModelInfer over plain HTTP/2 with `headers` (a `grpc-timeout`)
/// and no client-side timer (tonic's and grpcio's clients keep a deadline
/// themselves as well); returns the `grpc-status` and `grpc-message` the
/// server sent.
pub async fn grpc_raw_call(
    base: &str,
    msg: &switchyard::edge::grpc::proto::ModelInferRequest,
    headers: &[(&str, &str)],
) -> (String, String) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use prost::Message;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
    msg.encode(&mut frame).unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut req = http::Request::post(format!("{base}/inference.GRPCInferenceService/ModelInfer"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(frame))).unwrap())
        .await
        .unwrap();
    let mut headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    if let Some(t) = collected.trailers() {
        headers.extend(t.clone());
    }
    let get = |k: &str| {
        headers
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (get("grpc-status"), get("grpc-message"))
}
