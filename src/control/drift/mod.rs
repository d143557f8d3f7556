//! Drift of live inputs and predictions against the training data: baseline
//! profiles, the statistics that compare distributions, and the per-version
//! monitor that bins live rows off the request path.

pub mod monitor;
pub mod profile;
pub mod stats;

pub use monitor::{Monitor, Report};
pub use profile::Profile;
