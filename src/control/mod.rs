//! The control plane: what decides which versions serve and how traffic splits.
//! Repository sources and their reconciliation into the model table, rollouts
//! that step traffic weights, and drift monitors attached to versions as
//! request observers.
//!
//! Imports: `core`, `runtime`, `serving`.

pub mod capture;
pub mod drift;
pub mod etcd;
pub mod otlp;
pub mod plane;
pub mod policy;
pub mod repository;
pub mod rollout;

pub use plane::{shutdown, Control};
