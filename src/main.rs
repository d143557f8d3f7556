//! The `switchyard` binary: parses the command line (`cli`) and wires the
//! layers together. No logic of its own.

mod cli;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, ServeArgs};
use switchyard::control::{repository, Control};
use switchyard::edge::{serve_grpc, serve_http, serve_metrics, AdminAuth, HttpConfig};
use switchyard::runtime;
use switchyard::serving::Models;

// ONNX Runtime and the model table allocate and free whole models; mimalloc
// returns freed memory to the OS instead of holding it like glibc's arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Profile(args) => args.run(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (source, state_dir) = args.source()?;
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
        let (control, loaded) = Control::start(
            source,
            publisher,
            repository::Options {
                mode: args.model_control,
                poll_interval: args.poll_interval,
                memory_limit: args.memory_limit,
                state_dir: Some(state_dir),
                warmup_decoder: switchyard::edge::v2::decode_warmup_file,
            },
        )?;
        let config = HttpConfig {
            max_body_bytes: args.max_body_bytes,
            default_model: args.default_model,
        };
        let admin = AdminAuth::new(args.admin_token).with_api_token(args.api_token);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let metrics = metrics_listener.map(|l| {
            tokio::spawn(serve_metrics(
                l,
                models.clone(),
                control.clone(),
                stopped(stop_rx.clone()),
            ))
        });
        let http = tokio::spawn(serve_http(
            listener,
            models.clone(),
            control.clone(),
            config,
            admin.clone(),
            stopped(stop_rx.clone()),
        ));
        let grpc = tokio::spawn(serve_grpc(
            grpc_listener,
            models,
            control,
            admin,
            args.max_body_bytes,
            stopped(stop_rx),
        ));
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        loaded.await.context("the control plane stopped")??;
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
