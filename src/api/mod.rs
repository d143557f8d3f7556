//! The protocol front ends: codecs that turn wire formats into [`crate::infer::InferRequest`]s, and the servers.

pub mod auth;
pub mod compression;
pub mod grpc;
pub mod http;
pub mod json;
pub mod mlflow;
pub mod rows;
mod server;
pub mod v1;
pub mod v2;

pub use auth::AdminAuth;

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
pub use http::{serve_http, serve_metrics, HttpConfig};
