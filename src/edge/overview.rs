//! What an operator sees of a model in one read: its versions and states, the
//! traffic split, queues, the last minutes of requests, the rollout and the
//! drift verdict. `GET /admin/models[/{m}]` answers it as JSON (the
//! `switchyard models` verb reads it) and the console draws it.

use serde::Serialize;

use crate::control::drift::{Monitor, Report};
use crate::control::rollout;
use crate::control::Control;
use crate::core::error::Result;
use crate::serving::{Model, Models, VersionState, Window};

/// One model, as `GET /admin/models` lists it.
#[derive(Debug, Serialize)]
pub struct ModelView {
    pub name: String,
    /// Why the model as a whole cannot serve (a bad config.toml, no versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The version that answers requests naming none when no policy splits them.
    pub default_version: Option<String>,
    pub versions: Vec<VersionView>,
    /// The traffic policy as `GET /admin/models/{m}/traffic` gives it.
    pub traffic: serde_json::Value,
    /// The latest rollout of this model, finished or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<rollout::Status>,
}

/// One version of a model.
#[derive(Debug, Serialize)]
pub struct VersionView {
    pub version: String,
    /// `READY` or `UNAVAILABLE`, Triton's words.
    pub state: &'static str,
    /// Why it is unavailable, or what it serves instead of its newest files.
    pub reason: String,
    /// Its share of the requests that name no version (0 to 1).
    pub share: f64,
    /// The percent of requests copied to it as a shadow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_percent: Option<f64>,
    pub queue_depth: usize,
    /// The last minute (the windows that closed in it).
    pub last_minute: Recent,
    /// The drift verdict when the version has a baseline profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftView>,
    /// The last minutes in windows, oldest first (one model's view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<Window>>,
}

/// Requests over a span of recent windows.
#[derive(Debug, Default, Serialize)]
pub struct Recent {
    pub seconds: f64,
    pub requests: u64,
    pub per_second: f64,
    pub error_rate: f64,
    /// The worst window's quantiles in the span (the windows' histograms are
    /// not kept, so the span's own quantile cannot be computed).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Recent {
    fn of(windows: &[Window]) -> Recent {
        // A fold, not sum(): an empty f64 sum is -0.0.
        let seconds = windows.iter().map(|w| w.seconds).fold(0.0, |a, b| a + b);
        let requests: u64 = windows.iter().map(|w| w.requests).sum();
        let errors: u64 = windows.iter().map(|w| w.errors).sum();
        let worst = |f: fn(&Window) -> Option<f64>| windows.iter().filter_map(f).reduce(f64::max);
        Recent {
            seconds,
            requests,
            per_second: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            error_rate: if requests > 0 {
                errors as f64 / requests as f64
            } else {
                0.0
            },
            p50_ms: worst(|w| w.p50_ms),
            p99_ms: worst(|w| w.p99_ms),
        }
    }
}

/// A version's drift report, summed up; `report` in full for one model's view.
#[derive(Debug, Serialize)]
pub struct DriftView {
    pub alert: bool,
    pub prediction_alert: bool,
    pub rows: usize,
    /// Fewer rows than this: no verdict yet, and no worst feature named.
    pub min_rows: usize,
    /// The input feature with the largest PSI, and that PSI.
    pub worst_feature: Option<String>,
    pub worst_psi: Option<f64>,
    pub psi_threshold: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// Windows in the last minute: the newest twelve 5-second windows.
const LAST_MINUTE: usize = 12;

/// Every model, by name (`detail`: each version's windows and drift report
/// in full, as one model's page needs). Locks drift windows: call it off the
/// async threads.
pub fn gather(
    models: &Models,
    rollouts: &[rollout::Status],
    only: Option<&str>,
    detail: bool,
    store: Option<&crate::control::policy::PolicyStore>,
) -> Result<Vec<ModelView>> {
    let table = models.snapshot();
    if let Some(m) = only.filter(|m| !table.models.contains_key(*m)) {
        // The words every other route uses.
        return Err(crate::core::error::Error::not_found(format!(
            "unknown model '{m}'"
        )));
    }
    let mut names: Vec<&String> = table
        .models
        .keys()
        .filter(|n| only.is_none_or(|m| m == n.as_str()))
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| {
            let m = &table.models[name];
            view(
                m,
                rollouts.iter().find(|r| r.model == **name).cloned(),
                detail,
                store,
            )
        })
        .collect())
}

fn view(
    m: &Model,
    rollout: Option<rollout::Status>,
    detail: bool,
    store: Option<&crate::control::policy::PolicyStore>,
) -> ModelView {
    let traffic = &m.traffic;
    let default = m.default_version().map(|v| v.version);
    let shadow = traffic.spec.shadow.as_ref();
    let versions = m
        .versions
        .iter()
        .map(|(v, state)| {
            let share = if traffic.splits() {
                traffic.share(*v).unwrap_or(0.0)
            } else if Some(*v) == default {
                1.0
            } else {
                0.0
            };
            let shadow_percent = shadow
                .filter(|s| s.version.parse() == Ok(*v) || m.aliases.get(&s.version) == Some(v))
                .map(|s| s.percent);
            match state {
                VersionState::Ready(mv) => {
                    let windows = mv.stats.windows();
                    let minute = &windows[windows.len().saturating_sub(LAST_MINUTE)..];
                    let drift = mv.observer::<Monitor>().map(|d| {
                        let r = d.report();
                        let worst = r
                            .features
                            .iter()
                            .filter(|f| f.side == crate::control::drift::profile::Side::Input)
                            .filter(|_| r.rows >= r.min_rows.max(1))
                            .max_by(|a, b| a.psi.total_cmp(&b.psi));
                        DriftView {
                            alert: r.alert,
                            prediction_alert: r.prediction_alert,
                            rows: r.rows,
                            min_rows: r.min_rows,
                            worst_feature: worst.map(|f| f.feature.clone()),
                            worst_psi: worst.map(|f| f.psi),
                            psi_threshold: r.psi_threshold,
                            report: detail.then_some(r),
                        }
                    });
                    VersionView {
                        version: v.to_string(),
                        state: "READY",
                        reason: m.failures.get(v).map_or_else(String::new, |e| {
                            format!("serving earlier files; the newest failed to load: {e}")
                        }),
                        share,
                        shadow_percent,
                        queue_depth: mv.queue_depth(),
                        last_minute: Recent::of(minute),
                        drift,
                        windows: detail.then_some(windows),
                    }
                }
                VersionState::Failed(e) => VersionView {
                    version: v.to_string(),
                    state: "UNAVAILABLE",
                    reason: e.to_string(),
                    share,
                    shadow_percent,
                    queue_depth: 0,
                    last_minute: Recent::default(),
                    drift: None,
                    windows: None,
                },
            }
        })
        .collect();
    ModelView {
        name: m.name.to_string(),
        error: m.error.clone(),
        default_version: default.map(|v| v.to_string()),
        versions,
        traffic: super::http::traffic_json(m, store),
        rollout,
    }
}

/// The views of `only` (or every model) with the rollouts the control plane
/// knows: what `GET /admin/models` and the console read.
pub async fn read(
    models: &std::sync::Arc<Models>,
    control: &Control,
    only: Option<&str>,
    detail: bool,
) -> Result<Vec<ModelView>> {
    let rollouts = control.rollouts().await?;
    let (models, control, only) = (models.clone(), control.clone(), only.map(str::to_string));
    super::off_runtime("the models' overview", move || {
        gather(
            &models,
            &rollouts,
            only.as_deref(),
            detail,
            control.policy_store(),
        )
    })
    .await
}
