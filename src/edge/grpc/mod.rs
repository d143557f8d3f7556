//! The gRPC front end: Triton's `inference.GRPCInferenceService` (the Open Inference
//! Protocol plus Triton's additions) over tonic, served by the shared accept loop.

pub(crate) mod codec;
mod service;
mod unary;

/// Messages and service generated from `proto/grpc_predict_v2.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

pub use service::{serve_grpc, InferenceService};
