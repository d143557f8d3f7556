//! Switchyard: a model-serving gateway. Codecs at the edge, one request type inside,
//! a lock-free model table, and inference on worker threads.

pub mod api;
pub mod backend;
pub mod config;
pub mod drift;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod repository;
pub mod rollout;
pub mod sys;
pub mod tensor;

pub use error::{Error, Result};
