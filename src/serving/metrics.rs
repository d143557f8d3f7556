//! Per-version metric handles, registered once at load so that recording on
//! the request path is a few atomic operations. They go through the `metrics`
//! facade: whichever recorder the edge installs (Prometheus) receives them.

use std::time::Duration;

use metrics::{counter, histogram, Counter, Histogram};

use crate::core::error::Error;
use crate::core::request::Protocol;

/// Handles of one version's metrics, registered once at load.
#[derive(Debug, Clone)]
pub struct VersionMetrics {
    model: String,
    version: String,
    request_http: Histogram,
    request_grpc: Histogram,
    ok_http: Counter,
    ok_grpc: Counter,
    pub queue: Histogram,
    pub compute: Histogram,
    pub batch_rows: Histogram,
    pub rows: Counter,
}

impl Default for VersionMetrics {
    fn default() -> Self {
        VersionMetrics::new("", 0)
    }
}

impl VersionMetrics {
    pub fn new(model: &str, version: u64) -> Self {
        let (m, v) = (model.to_string(), version.to_string());
        let labels = [("model", m.clone()), ("version", v.clone())];
        let request = |p: &'static str| histogram!("switchyard_request_duration_seconds", "model" => m.clone(), "version" => v.clone(), "protocol" => p);
        let ok = |p: &'static str| counter!("switchyard_requests_total", "model" => m.clone(), "version" => v.clone(), "protocol" => p, "code" => "200");
        VersionMetrics {
            request_http: request("http"),
            request_grpc: request("grpc"),
            ok_http: ok("http"),
            ok_grpc: ok("grpc"),
            queue: histogram!("switchyard_queue_duration_seconds", &labels),
            compute: histogram!("switchyard_compute_duration_seconds", &labels),
            batch_rows: histogram!("switchyard_batch_size_rows", &labels),
            rows: counter!("switchyard_rows_total", &labels),
            model: m,
            version: v,
        }
    }

    /// One answered request.
    pub fn request(
        &self,
        protocol: Protocol,
        took: Duration,
        result: std::result::Result<(), &Error>,
    ) {
        let (h, ok) = match protocol {
            Protocol::Grpc => (&self.request_grpc, &self.ok_grpc),
            Protocol::Http => (&self.request_http, &self.ok_http),
        };
        h.record(took.as_secs_f64());
        match result {
            Ok(()) => ok.increment(1),
            Err(e) => self.failed(protocol, e),
        }
    }

    /// One request answered with `e`. Alone (not through [`Self::request`]) for
    /// one that never reached the version: it could not be read or decoded.
    pub fn failed(&self, protocol: Protocol, e: &Error) {
        let p = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        };
        counter!("switchyard_requests_total", "model" => self.model.clone(), "version" => self.version.clone(),
            "protocol" => p, "code" => e.status_code().to_string())
        .increment(1);
        let reason = match e {
            Error::QueueFull { .. } => Some("queue_full"),
            Error::DeadlineExceeded(_) => Some("deadline"),
            Error::Overloaded(_) => Some("inflight_bytes"),
            _ => None,
        };
        if let Some(r) = reason {
            counter!("switchyard_rejected_total", "model" => self.model.clone(), "version" => self.version.clone(), "reason" => r)
                .increment(1);
        }
    }
}
