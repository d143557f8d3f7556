//! The bottom layer: what every other layer speaks. Tensors, the
//! protocol-neutral request and response, model metadata, the one error type
//! (which knows no protocol), and the configuration as plain data.
//!
//! Imports: nothing of the crate above it.

pub mod batch;
pub mod config;
pub mod error;
pub mod human;
pub mod json;
pub mod metadata;
pub mod request;
pub mod sys;
pub mod tasks;
pub mod tensor;
pub mod trace;
