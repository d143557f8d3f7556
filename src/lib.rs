//! Switchyard: a model-serving gateway. Codecs at the edge, one request type inside,
//! a lock-free model table, and inference on worker threads.
//!
//! The crate is five layers, each a folder whose imports only point down
//! (`tests/layers.rs` checks it):
//!
//! - [`core`]: tensors, the protocol-neutral request and response, the error
//!   type, model metadata and the plain-data configuration.
//! - [`runtime`]: the `Backend` trait and what runs a model (ONNX Runtime, candle).
//! - [`serving`]: the model table, routing, and the scheduler (queues, batcher,
//!   workers) that puts requests on a runtime.
//! - [`control`]: what changes the table: repository sources and reconciliation,
//!   rollouts, drift monitors.
//! - [`edge`]: listeners, auth, codecs, status mapping and the metrics exporter.

pub mod control;
pub mod core;
pub mod edge;
#[doc(hidden)]
pub mod fuzz;
pub mod runtime;
pub mod serving;

pub use crate::core::error::{Error, Result};
