//! The client side of the admin and inference APIs: one HTTP agent, the
//! server's address and token, and every failure sorted into the exit code a
//! script can act on.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// Why a verb failed, and so the exit code it ends with.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server answered and said no: its message, as it said it. Exit 1.
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// The command line cannot be acted on. Exit 2 (clap's code for usage).
    #[error("{0}")]
    Usage(String),
    /// No answer: refused connection, timeout, TLS failure. Exit 3.
    #[error("{0}")]
    Unreachable(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused { .. } => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
        }
    }
}

pub type Outcome<T = ()> = Result<T, Failure>;

/// How to reach the server: every client verb takes these.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// The server: its admin listener, which serves every route (or a public
    /// port with --token).
    #[arg(
        long,
        value_name = "URL",
        env = "SWITCHYARD_URL",
        default_value = "http://127.0.0.1:8003",
        global = true
    )]
    pub server: String,
    /// The admin token (`--admin-token` of the server), sent as a bearer token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// The API token (`--api-token` of the server) for predict calls and,
    /// with `--protect-reads`, reads of metadata and drift.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHYARD_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub api_token: Option<String>,
    /// The CA that signed the server's certificate (PEM), for https:// URLs.
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) for a server that asks for one (mutual TLS).
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_CERT",
        requires = "key",
        global = true
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_KEY",
        requires = "cert",
        global = true
    )]
    pub key: Option<PathBuf>,
    /// Seconds to wait for the server's answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, global = true)]
    pub timeout: u64,
}

/// A connection to one server.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    api_token: Option<String>,
}

impl Client {
    pub fn new(c: &Connection) -> Outcome<Client> {
        let base = c.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--server {base}: give a URL, http://HOST:PORT or https://HOST:PORT"
            )));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &c.cacert {
            let certs = certificates(ca, "--cacert")?;
            if certs.is_empty() {
                return Err(Failure::Usage(format!(
                    "--cacert {}: no certificate in it",
                    ca.display()
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
            let chain = certificates(cert, "--cert")?;
            let key = ureq::tls::PrivateKey::from_pem(&read(key)?)
                .map_err(|e| Failure::Usage(format!("--key {}: {e}", key.display())))?;
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(c.timeout.max(1))))
            .timeout_connect(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Client {
            agent,
            base,
            token: c.token.clone(),
            api_token: c.api_token.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn get(&self, path: &str) -> Outcome<Value> {
        self.call("GET", path, None)
    }

    /// `method` on `path` with an optional JSON body; the answer's JSON
    /// (`null` for an empty one).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Outcome<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        // Admin calls carry the admin token; the V2 API's predict and read
        // calls the API token when one is given (the server has one per kind).
        let admin = path.starts_with("/admin/") || path.starts_with("/v2/repository/");
        let token = if admin {
            self.token.as_ref()
        } else {
            self.api_token.as_ref().or(self.token.as_ref())
        };
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map(|b| serde_json::to_vec(b).expect("plain data"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.unwrap_or_default())
            .map_err(|e| Failure::Usage(format!("{url}: {e}")))?;
        let mut resp = self.agent.run(req).map_err(|e| {
            Failure::Unreachable(format!("cannot reach the server at {}: {e}", self.base))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| {
                Failure::Unreachable(format!("the server at {} broke off: {e}", self.base))
            })?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = match &value {
            Value::Object(o) => match o.get("error") {
                Some(Value::String(s)) => s.clone(),
                _ => value.to_string(),
            },
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        Err(Failure::Refused {
            status,
            message: format!("{status}: {message}"),
        })
    }
}

/// The certificates of a PEM file (its other items skipped).
fn certificates(
    path: &std::path::Path,
    flag: &str,
) -> Outcome<Vec<ureq::tls::Certificate<'static>>> {
    ureq::tls::parse_pem(&read(path)?)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Usage(format!("{flag} {}: {e}", path.display())))
}

fn read(path: &std::path::Path) -> Outcome<Vec<u8>> {
    std::fs::read(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

/// `MODEL` or `MODEL:VERSION`.
pub fn model_version(s: &str) -> Outcome<(String, Option<String>)> {
    let (m, v) = match s.rsplit_once(':') {
        Some((m, v)) => (m, Some(v)),
        None => (s, None),
    };
    if m.is_empty() || v.is_some_and(|v| v.parse::<u64>().map_or(true, |n| n == 0)) {
        return Err(Failure::Usage(format!(
            "'{s}': give MODEL or MODEL:VERSION (a version is a positive integer)"
        )));
    }
    Ok((m.to_string(), v.map(str::to_string)))
}

/// A path segment: a model name goes into URLs as it is, so refuse what
/// would change the path.
pub fn segment(name: &str) -> Outcome<&str> {
    if name.is_empty() || name.contains(['/', '?', '#', '%']) || name == "." || name == ".." {
        return Err(Failure::Usage(format!("'{name}' is not a model name")));
    }
    Ok(name)
}
