//! The edge: listeners, auth, the codecs that turn each wire format into the
//! protocol-neutral [`crate::core::request::InferRequest`] and back, the
//! mapping of errors to each protocol's status, and the metrics exporter.
//!
//! Imports: every layer below (`core`, `runtime`, `serving`, `control`).

pub mod auth;
pub mod compression;
mod console;
pub mod embeddings;
pub mod grpc;
pub mod http;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod mlflow;
pub mod overview;
pub mod pipeline;
pub mod platform;
pub mod rows;
mod server;
pub mod status;
pub mod tls;
pub mod trace;
pub mod v1;
pub mod v2;

pub use auth::AdminAuth;
pub use status::ErrorStatus;

/// The protocol extensions this server speaks, as `GET /v2` and gRPC
/// ServerMetadata list them (Triton's names).
pub const EXTENSIONS: &[&str] = &[
    "parameters",
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];
pub use grpc::serve_grpc;

/// Runs `f` on the blocking pool and awaits it: what reads state that a
/// thread of its own locks (a drift window, shared with its binning thread;
/// the `/metrics` render, which reads them all) must never do so on an async
/// thread. Control actions do not come here: they go to the control plane's
/// channel (`control::Control`).
pub(crate) async fn off_runtime<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> crate::core::error::Result<T> + Send + 'static,
) -> crate::core::error::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::core::error::Error::Internal(format!("{what} stopped: {e}")))?
}
pub use http::{serve_http, serve_metrics, HttpConfig};
