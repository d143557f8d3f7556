//! The protocol front ends: codecs that turn wire formats into [`crate::infer::InferRequest`]s, and the servers.

pub mod compression;
pub mod http;
pub mod v2;

pub use http::{serve_http, HttpConfig};
