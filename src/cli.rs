//! The command line: `switchyard serve` and `switchyard profile`, their flags
//! (each also an environment variable), and the model source the flags name;
//! the operator's client verbs (`crate::ops`) and the shell completions and
//! man page generated from it all.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use switchyard::control::policy::{PolicyStore, StoreSpec};
use switchyard::control::repository;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "A model-serving gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve a model repository over the KServe V2 / Open Inference Protocol.
    Serve(Box<ServeArgs>),
    /// Write a drift profile (baseline.json) of a model version from reference data.
    Profile(ProfileArgs),
    /// List the models of a running server: versions, states, shares, queues, recent latency, drift.
    Models(crate::ops::ModelsArgs),
    /// Get or set a model's traffic split between versions.
    Traffic(crate::ops::TrafficArgs),
    /// Start, watch or abort a progressive rollout.
    Rollout(crate::ops::RolloutArgs),
    /// A model version's drift against its training data, worst feature first.
    Drift(crate::ops::DriftArgs),
    /// Load a model from the repository (Triton's repository API).
    Load(crate::ops::LoadArgs),
    /// Unload a model.
    Unload(crate::ops::LoadArgs),
    /// Send rows (CSV, .npy, .parquet) or a V2 JSON request to a model; print its answer.
    Infer(crate::ops::InferArgs),
    /// Print a shell completion script: `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `switchyard man > switchyard.1`.
    Man,
}

/// Prints the completion script of `shell` for this command line.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "switchyard", &mut std::io::stdout());
}

/// Prints the man page: the command's and each subcommand's, one after another.
pub fn man() -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // The page's title names the subcommand (clap wants a 'static name).
        let name: &'static str = format!("switchyard-{}", sub.get_name()).leak();
        clap_mangen::Man::new(sub.clone().name(name)).render(&mut out)?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ProfileArgs {
    /// The version folder: DIR/<model>/<version>.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Reference (training) data: CSV (a header row names the features) or a 2-D .npy.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Where to write it; default: baseline.json in the version folder.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Quantile bins per numeric feature.
    #[arg(long, default_value_t = 10)]
    pub bins: usize,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model repository: DIR/<model>/<version>/model.onnx, optional DIR/<model>/config.toml.
    /// With --model-name, one model's folder instead.
    #[arg(long, value_name = "DIR", env = "SWITCHYARD_MODELS")]
    pub models: Option<PathBuf>,
    /// Serve the folder --models names as one model of this name: a model file
    /// at its top (model.onnx, model.safetensors) is version 1, numbered
    /// folders are versions; a repository of model folders is served as one
    /// (KServe's storage initializer puts one model at /mnt/models).
    #[arg(long, value_name = "NAME", env = "SWITCHYARD_MODEL_NAME")]
    pub model_name: Option<String>,
    /// The cloud platform whose container contract to follow: `auto` reads it
    /// from the environment (Vertex AI sets AIP_HTTP_PORT; SageMaker runs
    /// `serve` alone with the model at /opt/ml/model, or sets
    /// SAGEMAKER_MULTI_MODEL=true); `none` ignores it. See the README, Deploying.
    #[arg(long, value_enum, default_value = "auto", env = "SWITCHYARD_PLATFORM")]
    pub platform: PlatformKind,
    /// SageMaker multi-model endpoints: `POST /models` loads folders under
    /// this one only (where SageMaker unpacks them).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/opt/ml/models",
        env = "SWITCHYARD_MULTI_MODEL_ROOT"
    )]
    pub multi_model_root: PathBuf,
    /// Follow the MLflow Model Registry of this tracking server (http://host:port).
    #[arg(long, value_name = "URL", env = "SWITCHYARD_MLFLOW_URI")]
    pub mlflow_uri: Option<String>,
    /// A registered model to serve, NAME or NAME@ALIAS (the alias's version
    /// serves); repeatable. None: every registered model tagged switchyard.serve=true.
    #[arg(long, value_name = "NAME[@ALIAS]", requires = "mlflow_uri")]
    pub mlflow_model: Vec<String>,
    /// Where versions downloaded from MLflow are kept (created 0700).
    /// Default: mlflow-cache in the state directory.
    #[arg(long, value_name = "DIR", env = "SWITCHYARD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Largest file of a version downloaded from MLflow.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8GiB", env = "SWITCHYARD_MAX_MODEL_BYTES")]
    pub max_model_bytes: u64,
    /// Where traffic policies set over the admin API are kept, so that a restart
    /// keeps them and replicas sharing it converge. Default: DIR/.switchyard of
    /// --models (shared by every replica of that repository), else state/ in
    /// --cache-dir, else $XDG_STATE_HOME/switchyard (~/.local/state/switchyard).
    #[arg(long, value_name = "DIR", env = "SWITCHYARD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where traffic policies are kept and read: `file:DIR` (default: the
    /// state directory), `configmap:DIR`, a Kubernetes ConfigMap mounted
    /// as files (one key `<model>.json` per model), applied when the kubelet
    /// swaps it and never written (admin changes answer 409), or
    /// `etcd:http://HOST:2379[,HOST:2379...]/PREFIX`, shared by every replica
    /// that names the same prefix (key PREFIX/traffic/<model>).
    #[arg(long, value_name = "file:DIR|configmap:DIR|etcd:URL/PREFIX", value_parser = StoreSpec::parse, env = "SWITCHYARD_POLICY_STORE")]
    pub policy_store: Option<StoreSpec>,
    /// etcd's CA certificate (PEM), as etcdctl's --cacert.
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// A client certificate for etcd (PEM), as etcdctl's --cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_ETCD_CERT",
        requires = "etcd_key"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM), as etcdctl's --key.
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_ETCD_KEY",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,
    /// An etcd user, NAME:PASSWORD, as etcdctl's --user (prefer the env variable).
    #[arg(
        long,
        value_name = "NAME:PASSWORD",
        env = "SWITCHYARD_ETCD_USER",
        hide_env_values = true
    )]
    pub etcd_user: Option<String>,
    /// Seconds this replica's etcd lease outlives it: how long a replica
    /// that died stays listed, and a rollout it led waits for a new leader.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(i64).range(3..=3600), env = "SWITCHYARD_ETCD_LEASE_TTL")]
    pub etcd_lease_ttl: i64,
    /// How much CPU goes to waiting busily for latency: `cpu` (never: every
    /// hand-off wakes a sleeping thread), `balanced` (only while requests
    /// come close together; idle costs nothing) or `latency` (always, after
    /// every request). A model's `latency_mode` in config.toml overrides it.
    #[arg(long, value_name = "cpu|balanced|latency", default_value = "balanced", value_parser = switchyard::core::config::LatencyMode::parse, env = "SWITCHYARD_LATENCY_MODE")]
    pub latency_mode: switchyard::core::config::LatencyMode,
    /// Capture a sample of every model's requests and answers into rotating
    /// gzip JSON Lines files under DIR/<model>/<version>/ (a model's
    /// config.toml [capture] overrides any key). They hold inputs: see the
    /// README, Data capture, before turning it on.
    #[arg(
        long,
        value_name = "DIR",
        env = "SWITCHYARD_CAPTURE_DIR",
        conflicts_with = "capture_sink"
    )]
    pub capture_dir: Option<PathBuf>,
    /// Or send them to this HTTP sink as CloudEvents, as KServe's logger does.
    #[arg(long, value_name = "URL", env = "SWITCHYARD_CAPTURE_SINK")]
    pub capture_sink: Option<String>,
    /// The share of requests captured (default 1).
    #[arg(long, value_name = "RATE", env = "SWITCHYARD_CAPTURE_SAMPLE_RATE", value_parser = share)]
    pub capture_sample_rate: Option<f64>,
    /// Export OpenTelemetry spans of every inference call to this OTLP
    /// collector (Jaeger, Tempo, an OpenTelemetry Collector): gRPC, or
    /// HTTP/protobuf for port 4318 or --otlp-protocol. Without it, the
    /// standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; with neither, off.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// grpc or http/protobuf (else OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL).
    #[arg(long, value_name = "PROTOCOL", value_parser = switchyard::control::otlp::Protocol::parse)]
    pub otlp_protocol: Option<switchyard::control::otlp::Protocol>,
    /// The share of calls traced when the caller decided nothing; a caller's
    /// sampled `traceparent` is always followed (parent-based sampling).
    #[arg(
        long,
        value_name = "RATIO",
        default_value_t = 1.0,
        env = "SWITCHYARD_TRACE_SAMPLE_RATIO",
        value_parser = share
    )]
    pub trace_sample_ratio: f64,
    /// This replica's name in the fleet (GET /admin/fleet). Default: the
    /// host name (a pod's name) and the HTTP port.
    #[arg(long, value_name = "NAME", env = "SWITCHYARD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Do not record Prometheus metrics (GET /metrics answers 404).
    #[arg(long, conflicts_with = "metrics")]
    pub no_metrics: bool,
    /// Also serve GET /metrics alone on this address (as Triton's metrics port,
    /// 8002); the HTTP port keeps serving it too.
    #[arg(long, value_name = "ADDR", env = "SWITCHYARD_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Bucket bounds in seconds of the latency histograms, e.g.
    /// 0.001,0.005,0.025,0.1,0.5 (default: 10 µs to 10 s, three a decade).
    #[arg(long, value_name = "SECONDS,...", value_delimiter = ',')]
    pub latency_buckets: Vec<f64>,
    /// Bearer token the predict endpoints need (HTTP and gRPC); none: open.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHYARD_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// HTTP listen address.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8000",
        env = "SWITCHYARD_HTTP"
    )]
    pub http: SocketAddr,
    /// gRPC listen address.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8001",
        env = "SWITCHYARD_GRPC"
    )]
    pub grpc: SocketAddr,
    /// Bearer token the admin calls (repository load/unload, traffic, rollouts)
    /// need, on every listener. Without one, admin calls are served on the
    /// admin listener (--admin) only.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// TLS on the HTTP and gRPC ports: the certificate chain (PEM, leaf
    /// first). Reloaded when the file changes.
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM): mutual TLS.
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Also serve the metrics port (--metrics) over TLS.
    #[arg(
        long,
        requires = "tls_cert",
        requires = "metrics",
        env = "SWITCHYARD_METRICS_TLS"
    )]
    pub metrics_tls: bool,
    /// The admin listener: HTTP, every route, admin calls without a token when
    /// --admin-token is not set. `off`: none.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:8003", value_parser = parse_listen, env = "SWITCHYARD_ADMIN")]
    pub admin: Listen,
    /// With --api-token, also require it of metadata, statistics, drift and the
    /// repository index (health and /metrics stay open).
    #[arg(long, env = "SWITCHYARD_PROTECT_READS")]
    pub protect_reads: bool,
    /// Bearer token GET /metrics needs (on the HTTP port and the metrics port).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHYARD_METRICS_TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
    /// On SIGTERM or SIGINT, readiness turns 503 at once and requests are still
    /// served for this long (time for endpoints to drop the pod) before the
    /// listeners close.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration, env = "SWITCHYARD_SHUTDOWN_DELAY")]
    pub shutdown_delay: std::time::Duration,
    /// The whole stop's budget from the signal, the delay included: requests in
    /// flight and queued finish within it, then the process exits (1 if some
    /// did not, with what was still running logged). A second signal exits at once.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration, env = "SWITCHYARD_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: std::time::Duration,
    /// The model `POST /invocations` (MLflow scoring) serves; default: the only one.
    #[arg(long, value_name = "NAME", env = "SWITCHYARD_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Largest request body (HTTP) or message (gRPC) accepted; larger ones get
    /// 413 / RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "BYTES", default_value_t = switchyard::edge::http::DEFAULT_MAX_BODY_BYTES, env = "SWITCHYARD_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// A connection must send a complete request head (h2: its preface and
    /// first HEADERS) within this of connecting, and a keep-alive HTTP/1.1
    /// connection its next head within this of starting it; else it is closed
    /// (HTTP/1.1: with a 408).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, env = "SWITCHYARD_HEADER_TIMEOUT")]
    pub header_timeout: std::time::Duration,
    /// A connection with no request in flight is closed after this.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, env = "SWITCHYARD_IDLE_TIMEOUT")]
    pub idle_timeout: std::time::Duration,
    /// A request body (a gRPC message) must arrive within this of its start:
    /// 408 / DEADLINE_EXCEEDED otherwise.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, env = "SWITCHYARD_BODY_TIMEOUT")]
    pub body_timeout: std::time::Duration,
    /// Open connections across the listeners; past it, new ones are closed at
    /// once (switchyard_connections_refused_total counts them).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4096,
        env = "SWITCHYARD_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,
    /// Request bytes being read or decoded across all connections; past it,
    /// requests get 429 / RESOURCE_EXHAUSTED with Retry-After. Default: a
    /// quarter of --memory-limit, else 1GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "SWITCHYARD_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<u64>,
    /// Who changes what is loaded: `poll` follows the repository (on change, and
    /// rescanning every --poll-interval); `explicit` loads it at start and then
    /// only on repository API calls; `none` loads it at start, never again.
    #[arg(
        long,
        value_enum,
        default_value = "poll",
        env = "SWITCHYARD_MODEL_CONTROL"
    )]
    pub model_control: repository::ControlMode,
    /// How often the repository is rescanned (`poll`), e.g. 5s, 500ms, 1m. File
    /// change events trigger a rescan sooner; this is the fallback.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration, env = "SWITCHYARD_POLL_INTERVAL")]
    pub poll_interval: std::time::Duration,
    /// Refuse to load a version that would take the server's memory (RSS) past
    /// this, e.g. 2GiB, 512MB; a refused version is reported with the reason.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "SWITCHYARD_MEMORY_LIMIT")]
    pub memory_limit: Option<u64>,
}

/// The cloud platforms whose container contracts `serve` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformKind {
    Auto,
    None,
    Sagemaker,
    Vertex,
}

/// Where SageMaker puts the model of a single-model endpoint.
const SAGEMAKER_MODEL_DIR: &str = "/opt/ml/model";

/// A listen address, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("'{s}' is not HOST:PORT or off: {e}"))
}

/// The state directory when no flag names one: the XDG state home.
fn default_state_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .context("no --state-dir, --models or --cache-dir, and neither XDG_STATE_HOME nor HOME is set: give --state-dir")?;
    Ok(base.join("switchyard"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("'{s}' is not a size such as 2GiB or 512MB: {e}"))
}

impl ProfileArgs {
    /// Writes the profile.
    pub fn run(self) -> anyhow::Result<()> {
        let args = self;
        switchyard::runtime::onnx::init()?;
        anyhow::ensure!(args.bins >= 2, "--bins must be at least 2");
        let profile =
            switchyard::control::drift::profile::build(&args.model, &args.data, args.bins)?;
        let out = args
            .out
            .unwrap_or_else(|| args.model.join(switchyard::control::drift::profile::FILE));
        std::fs::write(&out, serde_json::to_vec_pretty(&profile)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        tracing::info!(
            rows = profile.rows,
            features = profile.features.len(),
            out = %out.display(),
            "profile written"
        );
        Ok(())
    }
}

/// A share of requests, 0 to 1, as the sampling flags take it.
fn share(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{s}: a share, 0 to 1"))
}

impl ServeArgs {
    /// Follows the platform's contract (`--platform`, read from `env`): the
    /// port and the model folder it names, and the routes it adds. Logs which.
    pub fn apply_platform(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<switchyard::edge::platform::Platform> {
        use switchyard::edge::platform::{Platform, VertexRoutes};
        let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
        let truthy = |k: &str| {
            env(k).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
        };
        let repository_given = self.models.is_some() || self.mlflow_uri.is_some();
        let kind = match self.platform {
            PlatformKind::Auto if set("AIP_HTTP_PORT") || set("AIP_MODE") => PlatformKind::Vertex,
            PlatformKind::Auto
                if truthy("SAGEMAKER_MULTI_MODEL")
                    || (!repository_given
                        && (set("SAGEMAKER_BIND_TO_PORT")
                            || std::path::Path::new(SAGEMAKER_MODEL_DIR).is_dir())) =>
            {
                PlatformKind::Sagemaker
            }
            PlatformKind::Auto => PlatformKind::None,
            k => k,
        };
        let port = |var: &str, default: u16| -> anyhow::Result<SocketAddr> {
            let p = match env(var) {
                Some(v) => v
                    .trim()
                    .parse::<u16>()
                    .with_context(|| format!("{var}={v} is not a port"))?,
                None => default,
            };
            Ok(SocketAddr::from(([0, 0, 0, 0], p)))
        };
        let mut platform = Platform::default();
        match kind {
            PlatformKind::Auto | PlatformKind::None => return Ok(platform),
            PlatformKind::Sagemaker => {
                // The one port SageMaker routes to.
                self.http = port("SAGEMAKER_BIND_TO_PORT", 8080)?;
                if truthy("SAGEMAKER_MULTI_MODEL") {
                    // Models arrive by POST /models, each in a folder of its own.
                    self.models = None;
                    self.model_control = repository::ControlMode::Explicit;
                    platform.multi_model =
                        Some(repository::Registry::new(self.multi_model_root.clone()));
                } else if !repository_given {
                    self.models = Some(PathBuf::from(SAGEMAKER_MODEL_DIR));
                }
                // Other containers of an inference pipeline share the host's
                // ports: the others go in the range SageMaker leaves free.
                if let Some(range) = env("SAGEMAKER_SAFE_PORT_RANGE") {
                    let first = range
                        .split('-')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok())
                        .with_context(|| {
                            format!("SAGEMAKER_SAFE_PORT_RANGE={range} is not FIRST-LAST")
                        })?;
                    self.grpc = SocketAddr::from(([0, 0, 0, 0], first));
                    if self.admin.0.is_some() {
                        self.admin = Listen(Some(SocketAddr::from((
                            [127, 0, 0, 1],
                            first.saturating_add(1),
                        ))));
                    }
                    if self.metrics.is_some() {
                        self.metrics =
                            Some(SocketAddr::from(([0, 0, 0, 0], first.saturating_add(2))));
                    }
                }
                tracing::info!(http = %self.http, grpc = %self.grpc, multi_model = platform.multi_model.is_some(), "SageMaker's container contract");
            }
            PlatformKind::Vertex => {
                self.http = port("AIP_HTTP_PORT", 8080)?;
                let route = |var: &str, default: &str| {
                    let r = env(var)
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| default.into());
                    if r.starts_with('/') {
                        r
                    } else {
                        format!("/{r}")
                    }
                };
                platform.vertex = Some(VertexRoutes {
                    health: route("AIP_HEALTH_ROUTE", "/health"),
                    predict: route("AIP_PREDICT_ROUTE", "/predict"),
                });
                // The image's default --models (/mnt/models) is there only when
                // the model was baked in or mounted; else AIP_STORAGE_URI says.
                let baked = self.models.as_ref().is_some_and(|d| d.is_dir());
                if !repository_given
                    || (!baked && self.mlflow_uri.is_none() && set("AIP_STORAGE_URI"))
                {
                    // Vertex AI names the model's Cloud Storage folder; a Cloud
                    // Storage FUSE mount shows gs://B/P at /gcs/B/P.
                    let uri = env("AIP_STORAGE_URI").context(
                        "Vertex AI: no --models and no AIP_STORAGE_URI; bake the model into the image (/mnt/models) or mount it",
                    )?;
                    let dir = match uri.strip_prefix("gs://") {
                        Some(rest) => PathBuf::from("/gcs").join(rest),
                        None => PathBuf::from(uri.strip_prefix("file://").unwrap_or(&uri)),
                    };
                    anyhow::ensure!(
                        dir.is_dir(),
                        "Vertex AI: AIP_STORAGE_URI={uri} is not mounted at {}; Switchyard does not download from Cloud Storage: \
                         bake the model into the image (/mnt/models) or mount the bucket with Cloud Storage FUSE",
                        dir.display()
                    );
                    self.models = Some(dir);
                }
                tracing::info!(http = %self.http, routes = ?platform.vertex, "Vertex AI's container contract");
            }
        }
        // One model's folder, as both platforms give it, is served as `model`.
        if self.models.is_some() && self.model_name.is_none() {
            self.model_name = Some("model".into());
        }
        Ok(platform)
    }

    /// The policy store the flags name (default: `file:` the state
    /// directory), opened; an etcd store starts following in `scope`.
    pub fn policy_store(
        &self,
        state_dir: &std::path::Path,
        scope: &switchyard::core::tasks::Scope,
    ) -> anyhow::Result<PolicyStore> {
        Ok(match self.policy_store.clone() {
            None => PolicyStore::File(state_dir.to_path_buf()),
            Some(StoreSpec::File(dir)) => PolicyStore::File(dir),
            Some(StoreSpec::ConfigMap(dir)) => PolicyStore::ConfigMap(dir),
            Some(StoreSpec::Etcd(mut config)) => {
                use switchyard::control::etcd::{EtcdStore, Settings};
                config.ca = self.etcd_cacert.clone();
                config.cert = self.etcd_cert.clone();
                config.key = self.etcd_key.clone();
                config.user = self.etcd_user.clone();
                config.check()?;
                let replica = self.replica();
                let store = std::sync::Arc::new(EtcdStore::new(
                    config,
                    Settings {
                        replica,
                        lease_ttl: self.etcd_lease_ttl,
                        copy: Some(state_dir.join("etcd-policies.json")),
                    },
                ));
                tracing::info!(store = %store.config().describe(), replica = store.replica(), "traffic policies from etcd");
                store.start(scope);
                PolicyStore::Etcd(store)
            }
        })
    }

    /// This replica's name: --replica-id, else the host name and HTTP port.
    pub fn replica(&self) -> String {
        self.replica_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|| "switchyard".into());
            match self.http.port() {
                // An ephemeral port is known only once bound.
                0 => host,
                port => format!("{host}:{port}"),
            }
        })
    }

    /// The edge's bounds the flags set.
    pub fn limits(&self) -> switchyard::edge::limits::Limits {
        let inflight = self
            .max_inflight_bytes
            .or(self.memory_limit.map(|m| m / 4))
            .unwrap_or(1 << 30);
        switchyard::edge::limits::Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            max_body_bytes: self.max_body_bytes,
            max_inflight_bytes: usize::try_from(inflight).unwrap_or(usize::MAX),
        }
    }

    /// The model source the flags name (a repository folder, an MLflow
    /// registry, or both), and the state directory that goes with it.
    pub fn source(
        &self,
        platform: &switchyard::edge::platform::Platform,
    ) -> anyhow::Result<(Box<dyn repository::Source>, PathBuf)> {
        let args = self;
        let mut sources: Vec<Box<dyn repository::Source>> = Vec::new();
        if let Some(registry) = &platform.multi_model {
            sources.push(Box::new(repository::RegisteredSource(registry.clone())));
        }
        if let Some(dir) = &args.models {
            if !dir.is_dir() {
                bail!(
                    "the model repository {} is not a directory (expected DIR/<model>/<version>/model.onnx)",
                    dir.display()
                );
            }
            match &args.model_name {
                Some(name) => sources.push(Box::new(repository::NamedSource::new(
                    name.clone(),
                    dir.clone(),
                )?)),
                None => sources.push(Box::new(repository::FsSource::new(dir.clone()))),
            }
        } else if args.model_name.is_some() {
            bail!("--model-name names the model in the folder --models gives: give --models too");
        }
        if sources.is_empty() && args.mlflow_uri.is_none() {
            bail!("nothing to serve: give --models DIR (a model repository) or --mlflow-uri URL");
        }
        let state_dir = args
            .state_dir
            .clone()
            .or_else(|| args.models.as_ref().map(|dir| dir.join(".switchyard")))
            .or_else(|| args.cache_dir.as_ref().map(|c| c.join("state")))
            .map_or_else(default_state_dir, Ok)?;
        // Not /tmp, which anyone on the machine can write.
        let cache = args
            .cache_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("mlflow-cache"));
        if let Some(uri) = &args.mlflow_uri {
            sources.push(Box::new(repository::MlflowSource::with_limit(
                uri,
                repository::Follow::parse(&args.mlflow_model),
                cache,
                args.max_model_bytes,
            )?));
        }
        let source: Box<dyn repository::Source> = if sources.len() == 1 {
            sources.pop().expect("one")
        } else {
            Box::new(repository::Combined::new(sources))
        };
        Ok((source, state_dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut all = vec!["switchyard", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        // clap's own checks: conflicting names, global flags, requirements.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn no_platform_leaves_the_flags_alone() {
        let mut a = serve_args(&["--models", "/m", "--http", "127.0.0.1:9"]);
        let p = a.apply_platform(env(&[])).unwrap();
        assert!(p.vertex.is_none() && p.multi_model.is_none());
        assert_eq!(a.http.port(), 9);
        assert!(a.model_name.is_none());
    }

    #[test]
    fn vertex_takes_its_port_routes_and_storage_uri() {
        let dir = std::env::temp_dir().join(format!("sy-vertex-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uri = format!("file://{}", dir.display());
        let vars = [
            ("AIP_HTTP_PORT", "7080"),
            ("AIP_PREDICT_ROUTE", "v1/x:predict"),
            ("AIP_STORAGE_URI", uri.as_str()),
        ];
        // The image's default --models is absent: the storage URI serves.
        let mut a = serve_args(&["--models", "/nonexistent/mnt/models"]);
        let p = a.apply_platform(env(&vars)).unwrap();
        let routes = p.vertex.unwrap();
        assert_eq!(
            (routes.health.as_str(), routes.predict.as_str()),
            ("/health", "/v1/x:predict")
        );
        assert_eq!(a.http, "0.0.0.0:7080".parse().unwrap());
        assert_eq!(a.models.as_deref(), Some(dir.as_path()));
        assert_eq!(a.model_name.as_deref(), Some("model"));
        // A gs:// URI is read where Cloud Storage FUSE mounts it, and named
        // when it is not there.
        let mut a = serve_args(&[]);
        let e = a
            .apply_platform(env(&[
                ("AIP_HTTP_PORT", "8080"),
                ("AIP_STORAGE_URI", "gs://b/p"),
            ]))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/gcs/b/p"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sagemaker_takes_its_port_and_the_multi_model_api() {
        let mut a = serve_args(&["--models", "/m", "--platform", "sagemaker"]);
        let p = a.apply_platform(env(&[])).unwrap();
        assert!(p.multi_model.is_none());
        assert_eq!(a.http, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(a.model_name.as_deref(), Some("model"));
        let mut a = serve_args(&[]);
        let p = a
            .apply_platform(env(&[
                ("SAGEMAKER_MULTI_MODEL", "true"),
                ("SAGEMAKER_BIND_TO_PORT", "9090"),
            ]))
            .unwrap();
        assert!(p.multi_model.is_some());
        assert_eq!(a.http.port(), 9090);
        assert!(a.models.is_none());
        assert!(matches!(a.model_control, repository::ControlMode::Explicit));
        assert!(a
            .apply_platform(env(&[("SAGEMAKER_BIND_TO_PORT", "http")]))
            .is_err());
    }
}
