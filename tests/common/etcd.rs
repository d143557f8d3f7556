//! A real etcd cluster on loopback for the fleet tests: Debian's `etcd`
//! binary (`scripts/setup-etcd.sh`, which `make test` runs), one process per
//! member, each stoppable and restartable on its data; and a TCP relay in
//! front of a member that the test can cut, as a network partition cuts one
//! replica off.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The etcd binary: `ETCD_BIN`, else the one on PATH. A missing one fails
/// the test with the fix rather than skipping it.
pub fn etcd_bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return p.into();
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/setup-etcd.sh (make test does), or set {var}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    peer_port: u16,
    data: PathBuf,
    child: Option<Child>,
    cluster: String,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        let child = Command::new(etcd_bin("etcd"))
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_port),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_port),
            ])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "switchyard-test"])
            // etcd's defaults: a loaded 2-core machine must not flap elections.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    /// SIGKILL: a member that crashes.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on its data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
}

impl Cluster {
    /// `n` members in `dir`, started, and answering with a leader.
    pub fn start(dir: &Path, n: usize) -> Cluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, &(c, p))| Member {
                name: format!("m{i}"),
                client_port: c,
                peer_port: p,
                data: dir.join(format!("m{i}")),
                child: None,
                cluster: cluster.clone(),
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        let c = Cluster { members };
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    /// `http://127.0.0.1:C1,127.0.0.1:C2,...`: every member, for --policy-store.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl against the members that run, within `timeout`.
    fn etcdctl(&self, timeout: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
        let endpoints = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::url)
            .collect::<Vec<_>>()
            .join(",");
        Command::new(etcd_bin("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints])
            .arg(format!("--command-timeout={timeout}"))
            .args(args)
            .output()
    }

    /// etcdctl against the members that run; its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl("5s", args).expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until a quorum answers a linearizable read.
    pub fn wait_healthy(&self, within: Duration) {
        let t = Instant::now();
        loop {
            let ok = self
                .etcdctl("1s", &["get", "--prefix", "/health-check"])
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            assert!(t.elapsed() < within, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&[
            "get",
            "/",
            "--prefix",
            "--keys-only",
            "-w",
            "json",
            "--limit",
            "1",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }
}

/// A TCP relay to `target` on its own port; [`Relay::cut`] drops every
/// connection and refuses new ones until [`Relay::heal`].
pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        {
            let (cut, streams) = (cut.clone(), streams.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    if cut.load(Ordering::SeqCst) {
                        let _ = conn.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    {
                        let mut s = streams.lock().unwrap();
                        s.push(conn.try_clone().unwrap());
                        s.push(up.try_clone().unwrap());
                    }
                    pipe(conn.try_clone().unwrap(), up.try_clone().unwrap());
                    pipe(up, conn);
                }
            });
        }
        Relay { port, cut, streams }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
