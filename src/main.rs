//! The `switchyard` binary: parses the command line (`cli`) and wires the
//! layers together. No logic of its own.

mod cli;
mod ops;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, ServeArgs};
use switchyard::control::{repository, shutdown, Control};
use switchyard::core::tasks::Supervisor;
use switchyard::edge::auth::Port;
use switchyard::edge::limits::Bounds;
use switchyard::edge::tls::{Tls, TlsFiles};
use switchyard::edge::{serve_grpc, serve_http, serve_metrics, AdminAuth, HttpConfig};
use switchyard::runtime;
use switchyard::serving::Models;

// ONNX Runtime and the model table allocate and free whole models; mimalloc
// returns freed memory to the OS instead of holding it like glibc's arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let done = Ok(std::process::ExitCode::SUCCESS);
    match cli.command {
        Command::Serve(args) => serve(*args).and(done),
        Command::Profile(args) => args.run().and(done),
        Command::Models(a) => Ok(ops::run(ops::Verb::Models(a))),
        Command::Traffic(a) => Ok(ops::run(ops::Verb::Traffic(a))),
        Command::Rollout(a) => Ok(ops::run(ops::Verb::Rollout(a))),
        Command::Drift(a) => Ok(ops::run(ops::Verb::Drift(a))),
        Command::Load(a) => Ok(ops::run(ops::Verb::Load(a, false))),
        Command::Unload(a) => Ok(ops::run(ops::Verb::Load(a, true))),
        Command::Infer(a) => Ok(ops::run(ops::Verb::Infer(a))),
        Command::Completions { shell } => {
            cli::completions(shell);
            done
        }
        Command::Man => cli::man().and(done),
    }
}

fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    let platform = args.apply_platform(|k| std::env::var(k).ok())?;
    let (source, state_dir) = args.source(&platform)?;
    // Fail at start, with the fix, rather than on the first model.
    runtime::onnx::init()?;
    switchyard::core::config::set_server_latency_mode(args.latency_mode);
    switchyard::core::config::set_server_capture(switchyard::core::config::CaptureConfig {
        dir: args.capture_dir.clone(),
        sink: args.capture_sink.clone(),
        sample_rate: args.capture_sample_rate,
        ..Default::default()
    });
    let cores = switchyard::core::config::available_cores();
    if args.latency_mode.on(cores) != args.latency_mode {
        tracing::info!(
            cores,
            "--latency-mode balanced acts as cpu: with one core, a busy wait would take it from the thread it waits for"
        );
    }
    anyhow::ensure!(
        args.shutdown_delay < args.shutdown_timeout,
        "--shutdown-delay ({:?}) must be shorter than --shutdown-timeout ({:?}), the whole stop's budget",
        args.shutdown_delay,
        args.shutdown_timeout
    );
    let tree = Supervisor::default();
    // Before any model loads: their metric handles register with the recorder.
    if !args.no_metrics {
        let buckets = (!args.latency_buckets.is_empty()).then_some(args.latency_buckets.as_slice());
        switchyard::edge::metrics::install(buckets, &tree.edge)?;
    }
    switchyard::control::otlp::start(
        &switchyard::control::otlp::Options {
            endpoint: args.otlp_endpoint.clone(),
            protocol: args.otlp_protocol,
            sample_ratio: args.trace_sample_ratio,
            instance: Some(args.replica()),
        },
        &tree.telemetry,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchyard-io")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = bind(args.http, "HTTP").await?;
        let grpc_listener = bind(args.grpc, "gRPC").await?;
        let metrics_listener = match args.metrics {
            Some(addr) => Some(bind(addr, "metrics").await?),
            None => None,
        };
        let admin_listener = match args.admin.0 {
            Some(addr) => {
                if !addr.ip().is_loopback() && args.admin_token.is_none() {
                    tracing::warn!(%addr, "the admin listener is not on loopback and no --admin-token is set: anyone who reaches it can change what serves");
                }
                Some(bind(addr, "admin").await?)
            }
            None => None,
        };
        let (models, publisher) = Models::new(tree.serving.clone());
        let (control, loaded) = Control::start(
            source,
            publisher,
            repository::Options {
                mode: args.model_control,
                poll_interval: args.poll_interval,
                memory_limit: args.memory_limit,
                policies: Some(args.policy_store(&state_dir, &tree.control)?),
                warmup_decoder: switchyard::edge::v2::decode_warmup_file,
            },
            tree.control.clone(),
        )?;
        let bounds = Bounds::new(args.limits(), tree.stopping.clone());
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = Tls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: args.tls_client_ca.clone(),
                })?;
                tls.follow(&tree.edge);
                tracing::info!(
                    mutual = args.tls_client_ca.is_some(),
                    "TLS on the HTTP and gRPC ports"
                );
                Some(tls.acceptor())
            }
            _ => None,
        };
        let config = HttpConfig {
            default_model: args.default_model,
            port: Port::Public,
            tls: tls.clone(),
            platform,
        };
        let admin = AdminAuth::new(args.admin_token)
            .with_api_token(args.api_token)
            .protect_reads(args.protect_reads)
            .with_metrics_token(args.metrics_token);
        let edge = &tree.edge;
        if let Some(l) = metrics_listener {
            edge.spawn(serve_metrics(
                l,
                models.clone(),
                control.clone(),
                admin.clone(),
                bounds.private(),
                tls.clone().filter(|_| args.metrics_tls),
                edge.clone(),
            ));
        }
        if let Some(l) = admin_listener {
            // On loopback by default: plain HTTP, as kubectl exec or a sidecar reach it.
            let config = HttpConfig {
                port: Port::Admin,
                tls: None,
                ..config.clone()
            };
            edge.spawn(serve_http(
                l,
                models.clone(),
                control.clone(),
                config,
                admin.clone(),
                bounds.private(),
                edge.clone(),
            ));
        }
        let (m, c) = (models.clone(), control.clone());
        edge.spawn(serve_http(
            listener,
            m,
            c,
            config,
            admin.clone(),
            bounds.clone(),
            edge.clone(),
        ));
        let (m, c) = (models, control.clone());
        edge.spawn(serve_grpc(
            grpc_listener,
            m,
            c,
            admin,
            bounds,
            tls,
            edge.clone(),
        ));
        let signal = shutdown_signal();
        tokio::pin!(signal);
        // A stop asked for during the first load stops it at once.
        let early = tokio::select! {
            first = loaded => {
                first.context("the control plane stopped")??;
                false
            }
            () = &mut signal => true,
        };
        if !early {
            signal.await;
        }
        stop(&tree, &control, args.shutdown_delay, args.shutdown_timeout, early).await
    })
}

/// The stop in stages: readiness turns 503 at once while requests are still
/// served for `delay` (time for load balancers to drop this server; none
/// during the first load, when nothing sends traffic yet), then the task tree
/// stops within what is left of `budget`. A second signal exits at once.
async fn stop(
    tree: &Supervisor,
    control: &Control,
    delay: std::time::Duration,
    budget: std::time::Duration,
    early: bool,
) -> anyhow::Result<()> {
    tree.stopping.begin(budget);
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("a second signal: exiting now, without waiting");
        std::process::exit(1);
    });
    if !early && !delay.is_zero() {
        tracing::info!(
            ?delay,
            "shutting down: readiness is 503, still serving for the shutdown delay"
        );
        tokio::time::sleep(delay).await;
    }
    tracing::info!("shutting down: listeners closed, finishing open requests");
    let left = shutdown(tree, control).await;
    if left > 0 {
        tracing::error!(
            left,
            ?budget,
            "stopped with threads or tasks still running when --shutdown-timeout ran out"
        );
        std::process::exit(1);
    }
    tracing::info!(left, "stopped");
    Ok(())
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    tracing::info!(addr = %l.local_addr()?, "{what} listening");
    Ok(l)
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
}
