//! The `switchyard` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use switchyard::control::repository;
use switchyard::edge::{serve_grpc, serve_http, serve_metrics, AdminAuth, HttpConfig};
use switchyard::runtime;
use switchyard::serving::Models;

// ONNX Runtime and the model table allocate and free whole models; mimalloc
// returns freed memory to the OS instead of holding it like glibc's arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "A model-serving gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model repository over the KServe V2 / Open Inference Protocol.
    Serve(Box<ServeArgs>),
    /// Write a drift profile (baseline.json) of a model version from reference data.
    Profile(ProfileArgs),
}

#[derive(clap::Args)]
struct ProfileArgs {
    /// The version folder: DIR/<model>/<version>.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Reference (training) data: CSV (a header row names the features) or a 2-D .npy.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Where to write it; default: baseline.json in the version folder.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Quantile bins per numeric feature.
    #[arg(long, default_value_t = 10)]
    bins: usize,
}

fn profile(args: ProfileArgs) -> anyhow::Result<()> {
    runtime::onnx::init()?;
    anyhow::ensure!(args.bins >= 2, "--bins must be at least 2");
    let profile = switchyard::control::drift::profile::build(&args.model, &args.data, args.bins)?;
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

#[derive(clap::Args)]
struct ServeArgs {
    /// Model repository: DIR/<model>/<version>/model.onnx, optional DIR/<model>/config.toml.
    #[arg(
        long,
        value_name = "DIR",
        env = "SWITCHYARD_MODELS",
        required_unless_present = "mlflow_uri"
    )]
    models: Option<PathBuf>,
    /// Follow the MLflow Model Registry of this tracking server (http://host:port).
    #[arg(long, value_name = "URL", env = "SWITCHYARD_MLFLOW_URI")]
    mlflow_uri: Option<String>,
    /// A registered model to serve, NAME or NAME@ALIAS (the alias's version
    /// serves); repeatable. None: every registered model tagged switchyard.serve=true.
    #[arg(long, value_name = "NAME[@ALIAS]", requires = "mlflow_uri")]
    mlflow_model: Vec<String>,
    /// Where versions downloaded from MLflow are kept.
    #[arg(long, value_name = "DIR", env = "SWITCHYARD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Where traffic policies set over the admin API are kept, so that a restart
    /// keeps them and replicas sharing it converge. Default: DIR/.switchyard of
    /// --models (shared by every replica of that repository), else the cache dir.
    #[arg(long, value_name = "DIR", env = "SWITCHYARD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Do not record Prometheus metrics (GET /metrics answers 404).
    #[arg(long, conflicts_with = "metrics")]
    no_metrics: bool,
    /// Also serve GET /metrics alone on this address (as Triton's metrics port,
    /// 8002); the HTTP port keeps serving it too.
    #[arg(long, value_name = "ADDR", env = "SWITCHYARD_METRICS")]
    metrics: Option<SocketAddr>,
    /// Bucket bounds in seconds of the latency histograms, e.g.
    /// 0.001,0.005,0.025,0.1,0.5 (default: 10 µs to 10 s, three a decade).
    #[arg(long, value_name = "SECONDS,...", value_delimiter = ',')]
    latency_buckets: Vec<f64>,
    /// Bearer token the predict endpoints need (HTTP and gRPC); none: open.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHYARD_API_TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,
    /// HTTP listen address.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8000",
        env = "SWITCHYARD_HTTP"
    )]
    http: SocketAddr,
    /// gRPC listen address.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8001",
        env = "SWITCHYARD_GRPC"
    )]
    grpc: SocketAddr,
    /// Bearer token the admin calls (repository load/unload) need. Without one,
    /// admin calls are accepted from loopback peers only.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// The model `POST /invocations` (MLflow scoring) serves; default: the only one.
    #[arg(long, value_name = "NAME", env = "SWITCHYARD_DEFAULT_MODEL")]
    default_model: Option<String>,
    /// Largest request body (HTTP) or message (gRPC) accepted; larger ones get
    /// 413 / RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "BYTES", default_value_t = switchyard::edge::http::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Who changes what is loaded: `poll` follows the repository (on change, and
    /// rescanning every --poll-interval); `explicit` loads it at start and then
    /// only on repository API calls; `none` loads it at start, never again.
    #[arg(
        long,
        value_enum,
        default_value = "poll",
        env = "SWITCHYARD_MODEL_CONTROL"
    )]
    model_control: repository::ControlMode,
    /// How often the repository is rescanned (`poll`), e.g. 5s, 500ms, 1m. File
    /// change events trigger a rescan sooner; this is the fallback.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration, env = "SWITCHYARD_POLL_INTERVAL")]
    poll_interval: std::time::Duration,
    /// Refuse to load a version that would take the server's memory (RSS) past
    /// this, e.g. 2GiB, 512MB; a refused version is reported with the reason.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "SWITCHYARD_MEMORY_LIMIT")]
    memory_limit: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("'{s}' is not a size such as 2GiB or 512MB: {e}"))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Profile(args) => profile(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut sources: Vec<Box<dyn repository::Source>> = Vec::new();
    if let Some(dir) = &args.models {
        if !dir.is_dir() {
            bail!(
                "the model repository {} is not a directory (expected DIR/<model>/<version>/model.onnx)",
                dir.display()
            );
        }
        sources.push(Box::new(repository::FsSource::new(dir.clone())));
    }
    let cache = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("switchyard-cache"));
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| match &args.models {
            Some(dir) => dir.join(".switchyard"),
            None => cache.join("state"),
        });
    if let Some(uri) = &args.mlflow_uri {
        sources.push(Box::new(repository::MlflowSource::new(
            uri,
            repository::Follow::parse(&args.mlflow_model),
            cache,
        )?));
    }
    let source: Box<dyn repository::Source> = if sources.len() == 1 {
        sources.pop().expect("one")
    } else {
        Box::new(repository::Combined::new(sources))
    };
    // Fail at start, with the fix, rather than on the first model.
    runtime::onnx::init()?;
    // Before any model loads: their metric handles register with the recorder.
    if !args.no_metrics {
        let buckets = (!args.latency_buckets.is_empty()).then_some(args.latency_buckets.as_slice());
        switchyard::edge::metrics::install(buckets)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchyard-io")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("cannot listen on {} for HTTP", args.http))?;
        tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
        let grpc_listener = tokio::net::TcpListener::bind(args.grpc)
            .await
            .with_context(|| format!("cannot listen on {} for gRPC", args.grpc))?;
        tracing::info!(addr = %grpc_listener.local_addr()?, "gRPC listening");
        let metrics_listener = match args.metrics {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} for metrics"))?;
                tracing::info!(addr = %l.local_addr()?, "metrics listening");
                Some(l)
            }
            None => None,
        };
        let (models, publisher) = Models::new();
        let watcher = repository::Watcher::new(
            source,
            publisher,
            repository::Options {
                mode: args.model_control,
                poll_interval: args.poll_interval,
                memory_limit: args.memory_limit,
                state_dir: Some(state_dir),
                warmup_decoder: switchyard::edge::v2::decode_warmup_file,
            },
        );
        models.set_control(watcher.clone());
        let loader = tokio::task::spawn_blocking(move || watcher.start());
        let config = HttpConfig {
            max_body_bytes: args.max_body_bytes,
            default_model: args.default_model,
        };
        let admin = AdminAuth::new(args.admin_token).with_api_token(args.api_token);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let rollouts = Arc::new(switchyard::control::rollout::Rollouts::default());
        let metrics = metrics_listener.map(|l| {
            tokio::spawn(serve_metrics(
                l,
                models.clone(),
                rollouts.clone(),
                stopped(stop_rx.clone()),
            ))
        });
        let http = tokio::spawn(serve_http(
            listener,
            models.clone(),
            rollouts,
            config,
            admin.clone(),
            stopped(stop_rx.clone()),
        ));
        let grpc = tokio::spawn(serve_grpc(
            grpc_listener,
            models,
            admin,
            args.max_body_bytes,
            stopped(stop_rx),
        ));
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        loader.await.context("model loading stopped")??;
        http.await.context("HTTP server stopped")?;
        grpc.await.context("gRPC server stopped")?;
        if let Some(m) = metrics {
            m.await.context("metrics server stopped")?;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing open requests");
}
