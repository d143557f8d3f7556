//! Prometheus metrics: the recorder (`metrics` + `metrics-exporter-prometheus`)
//! and the gauges read off the model table at scrape time (the per-version
//! handles recorded on the request path are `serving::metrics`). Every
//! name and label set is in the README's metrics table.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::core::error::{Error, Result};
use crate::serving::{Models, VersionState};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets of the `_seconds` metrics: 10 µs to 10 s, three a decade.
pub const SECONDS_BUCKETS: [f64; 19] = [
    1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.0, 5.0, 10.0,
];
/// Buckets of `switchyard_batch_size_rows`: powers of two.
pub const ROWS_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// Installs the process-wide recorder; `/metrics` renders it from then on.
/// `seconds_buckets` replaces [`SECONDS_BUCKETS`] for every `_seconds` histogram.
pub fn install(seconds_buckets: Option<&[f64]>, scope: &crate::core::tasks::Scope) -> Result<()> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            seconds_buckets.unwrap_or(&SECONDS_BUCKETS),
        )
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), &ROWS_BUCKETS))
        // Gauges of retired versions stop being set at scrape time; drop them.
        .map(|b| {
            b.idle_timeout(
                metrics_util::MetricKindMask::GAUGE,
                Some(Duration::from_secs(300)),
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| Error::Internal(format!("cannot install the metrics recorder: {e}")))?;
    // Histogram samples wait in buckets until a render or an upkeep drains them:
    // without scrapes they would grow.
    let (upkeep, stop) = (handle.clone(), scope.token().clone());
    // Its own small runtime, as this starts before the server's: the thread
    // sleeps until the next upkeep or the stop, whichever comes first, so an
    // idle server wakes for it 12 times a minute (it ticked every 100 ms).
    let clock = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the metrics upkeep: {e}")))?;
    scope
        .spawn_thread("switchyard-metrics".into(), move || {
            clock.block_on(async {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
                    }
                }
            })
        })
        .map_err(|e| Error::Internal(format!("cannot start the metrics upkeep: {e}")))?;
    let _ = HANDLE.set(handle);
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "switchyard_request_duration_seconds",
        Unit::Seconds,
        "Inference requests from validation to answer."
    );
    describe_histogram!(
        "switchyard_queue_duration_seconds",
        Unit::Seconds,
        "Time a request waited for a worker."
    );
    describe_histogram!(
        "switchyard_compute_duration_seconds",
        Unit::Seconds,
        "Backend runs (one per batch)."
    );
    describe_histogram!("switchyard_batch_size_rows", "Rows per backend run.");
    describe_counter!(
        "switchyard_requests_total",
        "Inference requests by protocol and status code."
    );
    describe_counter!("switchyard_rows_total", "Rows inferred.");
    describe_counter!(
        "switchyard_rejected_total",
        "Requests refused before compute: queue full, deadline passed."
    );
    describe_counter!(
        "switchyard_load_failures_total",
        "Versions that failed to load or warm up."
    );
    describe_counter!(
        "switchyard_shadow_requests_total",
        "Copies sent to a shadow version."
    );
    describe_counter!(
        "switchyard_shadow_errors_total",
        "Shadow copies that failed."
    );
    describe_counter!(
        "switchyard_shadow_disagreements_total",
        "Shadow answers whose argmax differs from the primary's."
    );
    describe_gauge!("switchyard_queue_depth", "Requests waiting for a worker.");
    describe_gauge!(
        "switchyard_open_connections",
        "Client connections open across the listeners."
    );
    describe_counter!(
        "switchyard_connections_refused_total",
        "Connections closed on accept: --max-connections reached."
    );
    describe_counter!(
        "switchyard_connections_timed_out_total",
        "Connections closed by the header or idle deadline, by reason."
    );
    describe_counter!(
        "switchyard_inflight_bytes_refused_total",
        "Requests refused because their bytes did not fit --max-inflight-bytes."
    );
    describe_counter!(
        "switchyard_capture_records_total",
        "Capture records written to files or taken by the sink."
    );
    describe_counter!(
        "switchyard_capture_dropped_total",
        "Capture records dropped, by reason (queue_full, write_failed)."
    );
    describe_counter!(
        "switchyard_trace_spans_exported_total",
        "Spans the OTLP collector accepted."
    );
    describe_counter!(
        "switchyard_trace_spans_dropped_total",
        "Spans dropped, by reason (queue_full, export_failed)."
    );
    describe_gauge!(
        "switchyard_version_state",
        "1 for the state each known version is in."
    );
    describe_gauge!(
        "switchyard_traffic_weight",
        "Share of unversioned requests each version gets (0..1)."
    );
    describe_gauge!(
        "switchyard_model_load_duration_seconds",
        Unit::Seconds,
        "How long the version took to load and warm up."
    );
    describe_gauge!(
        "switchyard_rollout_weight",
        "Candidate weight of a rollout, by phase."
    );
    describe_gauge!(
        "switchyard_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident set size of the server."
    );
    describe_gauge!(
        "switchyard_drift_score",
        "Drift of a feature or output against the baseline, by statistic."
    );
    describe_gauge!(
        "switchyard_drift_alert",
        "1 when the share of drifted input features reaches drift.share."
    );
    describe_gauge!(
        "switchyard_prediction_drift_alert",
        "1 when the share of drifted outputs reaches drift.share."
    );
    describe_gauge!("switchyard_drift_window_rows", "Rows in the drift window.");
    describe_gauge!(
        "switchyard_versions_retiring",
        "Versions out of the table whose workers still finish what they hold."
    );
    describe_gauge!(
        "switchyard_retiring_oldest_seconds",
        Unit::Seconds,
        "How long the oldest retiring version has been retiring."
    );
    describe_gauge!(
        "switchyard_policy_store_up",
        "1 while the etcd policy store answers this replica's watch."
    );
    describe_gauge!(
        "switchyard_policy_store_revision",
        "The etcd revision this replica's copy of the policies is current to."
    );
    describe_gauge!(
        "switchyard_policy_store_age_seconds",
        Unit::Seconds,
        "Seconds since the copy of the policies was last known current (the watch's lag)."
    );
    describe_gauge!(
        "switchyard_fleet_replicas",
        "Replicas registered in the etcd policy store, this one included."
    );
    describe_gauge!(
        "switchyard_rollout_leader",
        "1 on the replica that drives the model's rollout in progress."
    );
}

/// The drift gauges of one version.
fn drift(model: &str, version: &str, r: &crate::control::drift::Report) {
    for f in &r.features {
        let stats = [
            ("psi", Some(f.psi)),
            ("jensen_shannon", Some(f.jensen_shannon)),
            ("ks", f.ks),
            ("wasserstein", f.wasserstein),
            ("chi_square", f.chi_square),
        ];
        for (name, value) in stats {
            if let Some(v) = value {
                gauge!("switchyard_drift_score", "model" => model.to_string(), "version" => version.to_string(),
                    "feature" => f.feature.clone(), "statistic" => name)
                .set(v);
            }
        }
    }
    let labels = [
        ("model", model.to_string()),
        ("version", version.to_string()),
    ];
    gauge!("switchyard_drift_alert", &labels).set(f64::from(r.alert));
    gauge!("switchyard_prediction_drift_alert", &labels).set(f64::from(r.prediction_alert));
    gauge!("switchyard_drift_window_rows", &labels).set(r.rows as f64);
}

/// The Prometheus text of every metric; the gauges are read off the table first.
/// `None` when the recorder is off (`--no-metrics`).
pub fn render(models: &Models, rollouts: &[crate::control::rollout::Status]) -> Option<String> {
    let handle = HANDLE.get()?;
    let table = models.snapshot();
    for (name, m) in &table.models {
        for (v, state) in &m.versions {
            let (model, version) = (name.clone(), v.to_string());
            let s = match state {
                VersionState::Ready(_) => "ready",
                VersionState::Failed(_) => "failed",
            };
            gauge!("switchyard_version_state", "model" => model.clone(), "version" => version.clone(), "state" => s).set(1.0);
            if let VersionState::Ready(mv) = state {
                gauge!("switchyard_queue_depth", "model" => model.clone(), "version" => version.clone())
                    .set(mv.queue_depth() as f64);
                gauge!("switchyard_model_load_duration_seconds", "model" => model.clone(), "version" => version.clone())
                    .set(mv.load_duration.as_secs_f64());
                let share = m.traffic.share(*v).unwrap_or_else(|| {
                    f64::from(m.default_version().is_some_and(|d| d.version == *v))
                });
                gauge!("switchyard_traffic_weight", "model" => model.clone(), "version" => version.clone())
                    .set(share);
                if let Some(d) = mv.observer::<crate::control::drift::Monitor>() {
                    drift(&model, &version, &d.report());
                }
            }
        }
        let s = &m.shadow_stats;
        let labels = [("model", name.clone())];
        use std::sync::atomic::Ordering::Relaxed;
        counter!("switchyard_shadow_requests_total", &labels).absolute(s.requests.load(Relaxed));
        counter!("switchyard_shadow_errors_total", &labels).absolute(s.errors.load(Relaxed));
        counter!("switchyard_shadow_disagreements_total", &labels)
            .absolute(s.disagreements.load(Relaxed));
    }
    for st in rollouts {
        let phase = format!("{:?}", st.phase).to_lowercase();
        gauge!("switchyard_rollout_weight", "model" => st.model.clone(), "candidate" => st.spec.candidate.clone(), "phase" => phase)
            .set(st.weight as f64);
    }
    let retiring = models.retiring();
    gauge!("switchyard_versions_retiring").set(retiring.len() as f64);
    gauge!("switchyard_retiring_oldest_seconds").set(
        retiring
            .iter()
            .map(|r| r.since.elapsed().as_secs_f64())
            .fold(0.0, f64::max),
    );
    counter!("switchyard_load_failures_total").absolute(
        models
            .load_failures
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(rss) = crate::core::sys::rss_bytes() {
        gauge!("switchyard_process_resident_memory_bytes").set(rss as f64);
    }
    Some(handle.render())
}
