//! Progressive rollouts (Flagger's vocabulary): a candidate version gets
//! `step_weight` of the traffic, and each `interval` its own live metrics over
//! that window are checked; healthy, it gets the next step, up to `max_weight`,
//! then all of it (promotion); `threshold` failed checks roll it back to 0.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::serving::{Histogram, Models, TrafficSpec};

/// `POST /admin/models/{m}/rollout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub candidate: String,
    #[serde(default = "default_step")]
    pub step_weight: u64,
    #[serde(default = "default_max")]
    pub max_weight: u64,
    /// A duration such as `30s` or `500ms`.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Failed checks before the rollback.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    #[serde(default = "default_error_rate")]
    pub max_error_rate: f64,
    #[serde(default)]
    pub max_p99_latency_ms: Option<f64>,
    /// Largest PSI of the candidate's input features over its drift window
    /// (checked when the candidate has a baseline profile).
    #[serde(default)]
    pub max_drift_psi: Option<f64>,
    /// Fewer requests than this in a window: no verdict, the step waits.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

fn default_step() -> u64 {
    10
}
fn default_max() -> u64 {
    50
}
fn default_interval() -> String {
    "30s".into()
}
fn default_threshold() -> u32 {
    3
}
fn default_error_rate() -> f64 {
    0.01
}
fn default_min_requests() -> u64 {
    100
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Progressing,
    Promoted,
    RolledBack,
    Aborted,
}

/// One check, or a change of phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub what: String,
    pub weight: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// The candidate's largest input PSI, when the rollout checks drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_psi: Option<f64>,
    /// A check's verdict: healthy or not; none for a change of phase or a
    /// window with too few requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

impl Event {
    /// A change of phase: no window measured.
    pub(crate) fn note(what: String, weight: u64) -> Event {
        Event {
            at: now(),
            what,
            weight,
            requests: None,
            error_rate: None,
            p99_ms: None,
            drift_psi: None,
            healthy: None,
        }
    }
}

/// The state `GET /admin/models/{m}/rollout` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub model: String,
    pub spec: RolloutSpec,
    pub stable: String,
    pub phase: Phase,
    pub weight: u64,
    pub failed_checks: u32,
    pub history: Vec<Event>,
    /// With an etcd policy store: the replica that drives it (none while
    /// the fleet elects one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl Status {
    /// A rollout of `candidate` against `stable` just started by `who`, at
    /// its first step.
    pub(crate) fn started(
        model: &str,
        spec: RolloutSpec,
        stable: u64,
        candidate: u64,
        who: &str,
    ) -> Status {
        let first = spec.step_weight.min(spec.max_weight);
        Status {
            model: model.to_string(),
            spec,
            stable: stable.to_string(),
            phase: Phase::Progressing,
            weight: first,
            failed_checks: 0,
            history: vec![Event::note(
                format!("started by {who}: candidate {candidate} at {first}% against {stable}"),
                first,
            )],
            leader: None,
        }
    }
}

/// Changes traffic policies on behalf of the rollouts: the control plane,
/// whose thread owns both.
pub(crate) trait Policies {
    fn models(&self) -> &Models;
    fn set_traffic(&mut self, model: &str, spec: TrafficSpec, who: &str) -> Result<()>;
}

/// The candidate's counters when a window opened: successes, failures, latency.
pub(crate) type Counts = (u64, u64, Vec<u64>);

/// One rollout and what its next check compares against.
struct Run {
    status: Status,
    stable: u64,
    candidate: u64,
    interval: Duration,
    /// When the next check is due.
    next: Instant,
    before: Option<Counts>,
}

/// The rollouts of this server, one per model at most. Owned by the control
/// plane's thread, which calls [`Rollouts::tick`] when [`Rollouts::next_due`]
/// comes: no thread, lock or condition variable per rollout.
#[derive(Default)]
pub struct Rollouts {
    runs: HashMap<String, Run>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Rollouts {
    /// Validates and starts a rollout of `spec.candidate` against the version
    /// that serves now, and sets the first weights.
    pub(crate) fn start(
        &mut self,
        p: &mut dyn Policies,
        model: &str,
        spec: RolloutSpec,
        who: &str,
    ) -> Result<Status> {
        let Plan {
            interval,
            stable,
            candidate,
        } = plan(p.models(), model, &spec)?;
        if self
            .runs
            .get(model)
            .is_some_and(|r| r.status.phase == Phase::Progressing)
        {
            return Err(Error::invalid(format!(
                "a rollout of '{model}' is in progress: DELETE it first"
            )));
        }
        let first = spec.step_weight.min(spec.max_weight);
        set_weights(
            p,
            model,
            stable,
            candidate,
            first,
            &format!("rollout started by {who}"),
        )?;
        let status = Status::started(model, spec, stable, candidate, who);
        tracing::info!(
            model,
            candidate,
            stable,
            weight = first,
            by = who,
            "rollout started"
        );
        let run = Run {
            status: status.clone(),
            stable,
            candidate,
            interval,
            next: Instant::now() + interval,
            before: counts(p.models(), model, candidate),
        };
        self.runs.insert(model.to_string(), run);
        Ok(status)
    }

    /// Every rollout this server ran or runs.
    pub fn all(&self) -> Vec<Status> {
        self.runs.values().map(|r| r.status.clone()).collect()
    }

    pub fn status(&self, model: &str) -> Result<Status> {
        self.runs
            .get(model)
            .map(|r| r.status.clone())
            .ok_or_else(|| Error::not_found(format!("no rollout of '{model}'")))
    }

    /// Stops a rollout in progress and gives the stable version all the traffic.
    pub(crate) fn abort(&mut self, p: &mut dyn Policies, model: &str, who: &str) -> Result<Status> {
        let r = self
            .runs
            .get_mut(model)
            .ok_or_else(|| Error::not_found(format!("no rollout of '{model}'")))?;
        if r.status.phase == Phase::Progressing {
            set_weights(
                p,
                model,
                r.stable,
                r.candidate,
                0,
                &format!("rollout aborted by {who}"),
            )?;
            let s = &mut r.status;
            s.phase = Phase::Aborted;
            s.weight = 0;
            s.history.push(Event::note(format!("aborted by {who}"), 0));
            tracing::info!(model, by = who, "rollout aborted");
        }
        Ok(r.status.clone())
    }

    /// When the next check of a rollout in progress is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.runs
            .values()
            .filter(|r| r.status.phase == Phase::Progressing)
            .map(|r| r.next)
            .min()
    }

    /// Checks every rollout whose interval has passed.
    pub(crate) fn tick(&mut self, p: &mut dyn Policies, now: Instant) {
        for (model, r) in &mut self.runs {
            if r.status.phase == Phase::Progressing && r.next <= now {
                r.next = now + r.interval;
                check(p, model, r);
            }
        }
    }
}

/// Adds a check to a rollout's history; a wait after a wait replaces it, so
/// the history stays bounded (steps and failed checks are) however long a
/// rollout waits for traffic: etcd bounds a value at 1.5 MiB.
pub(crate) fn record_check(history: &mut Vec<Event>, event: Event, waiting: bool) {
    if waiting
        && history
            .last()
            .is_some_and(|e| e.what.starts_with("waiting"))
    {
        history.pop();
    }
    history.push(event);
}

/// What a rollout spec asks for, checked against the model as it serves.
pub(crate) struct Plan {
    pub interval: Duration,
    pub stable: u64,
    pub candidate: u64,
}

/// Validates `spec` for `model`: the interval and weights in range, the
/// candidate ready, and a stable version (the one with the most weight now,
/// else the default) to roll out against.
pub(crate) fn plan(models: &Models, model: &str, spec: &RolloutSpec) -> Result<Plan> {
    let interval = humantime::parse_duration(&spec.interval)
        .map_err(|e| Error::invalid(format!("interval '{}': {e}", spec.interval)))?;
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(86_400) {
        return Err(Error::invalid(
            "interval must be at least 100ms and at most 24h",
        ));
    }
    if spec.step_weight == 0
        || spec.step_weight > 100
        || spec.max_weight == 0
        || spec.max_weight > 100
    {
        return Err(Error::invalid(
            "step_weight and max_weight are percentages in 1..=100",
        ));
    }
    if spec.threshold == 0 {
        return Err(Error::invalid("threshold must be at least 1"));
    }
    let m = models.model(model)?;
    let candidate: u64 = spec.candidate.parse().map_err(|_| {
        Error::invalid(format!(
            "candidate '{}' is not a version number",
            spec.candidate
        ))
    })?;
    if !m.is_ready(candidate) {
        return Err(Error::invalid(format!(
            "candidate {candidate} is not a ready version of '{model}' (ready: {:?})",
            m.ready_numbers()
        )));
    }
    // The stable version: the one with the most weight now, else the default.
    let stable = m
        .traffic
        .spec
        .weights
        .iter()
        .filter(|(v, w)| **w > 0 && v.parse::<u64>().ok() != Some(candidate))
        .max_by_key(|(_, w)| **w)
        .and_then(|(v, _)| v.parse::<u64>().ok())
        .or_else(|| m.default_version().map(|d| d.version))
        .filter(|&s| s != candidate)
        .ok_or_else(|| {
            Error::invalid(format!(
                "no version of '{model}' other than {candidate} serves to roll out against"
            ))
        })?;
    Ok(Plan {
        interval,
        stable,
        candidate,
    })
}

/// Gives `candidate` `weight` % and `stable` the rest, keeping the sticky header.
fn set_weights(
    p: &mut dyn Policies,
    model: &str,
    stable: u64,
    candidate: u64,
    weight: u64,
    who: &str,
) -> Result<()> {
    let current = p.models().model(model)?;
    let spec = weights_policy(&current.traffic.spec, stable, candidate, weight);
    p.set_traffic(model, spec, who)
}

/// The policy that gives `candidate` `weight` % and `stable` the rest,
/// keeping `current`'s sticky header and shadow (unless the shadow is one of
/// the two).
pub(crate) fn weights_policy(
    current: &TrafficSpec,
    stable: u64,
    candidate: u64,
    weight: u64,
) -> TrafficSpec {
    let mut spec = TrafficSpec {
        weights: [
            (stable.to_string(), 100 - weight),
            (candidate.to_string(), weight),
        ]
        .into_iter()
        .filter(|(_, w)| *w > 0)
        .collect(),
        sticky_header: current.sticky_header.clone(),
        shadow: current.shadow.clone(),
    };
    if spec
        .shadow
        .as_ref()
        .is_some_and(|s| spec.weights.contains_key(&s.version))
    {
        spec.shadow = None;
    }
    spec
}

/// The candidate's counters now; `None` when it does not serve.
pub(crate) fn counts(models: &Models, model: &str, candidate: u64) -> Option<Counts> {
    let m = models.model(model).ok()?;
    let crate::serving::VersionState::Ready(mv) = m.versions.get(&candidate)? else {
        return None;
    };
    Some((
        mv.stats.success.get().0,
        mv.stats.fail.get().0,
        mv.stats.latency.snapshot(),
    ))
}

/// One check at the end of an interval: measures the window, judges it, and
/// steps the weights (or ends the rollout).
fn check(p: &mut dyn Policies, model: &str, r: &mut Run) {
    let after = counts(p.models(), model, r.candidate);
    let (Some((ok0, fail0, h0)), Some((ok1, fail1, h1))) = (&r.before, &after) else {
        // The candidate stopped serving: that is a failed rollout.
        finish(
            p,
            model,
            r,
            Phase::RolledBack,
            "the candidate is not ready any more",
        );
        return;
    };
    let ok = ok1 - ok0.min(ok1);
    let fail = fail1 - fail0.min(fail1);
    let n = ok + fail;
    let error_rate = if n > 0 { fail as f64 / n as f64 } else { 0.0 };
    let p99_ms = Histogram::quantile(h0, h1, 0.99).map(|d| d.as_secs_f64() * 1000.0);
    r.before = after;
    let measured = Window {
        requests: n,
        error_rate,
        p99_ms,
        // Drift of the candidate's inputs over its own drift window.
        psi: r
            .status
            .spec
            .max_drift_psi
            .and_then(|_| candidate_psi(p.models(), model, r.candidate)),
    };
    let step = judge(
        &r.status.spec,
        r.status.weight,
        r.status.failed_checks,
        &measured,
    );
    record_check(
        &mut r.status.history,
        Event {
            at: now(),
            what: step.to_string(),
            weight: r.status.weight,
            requests: Some(n),
            error_rate: Some(error_rate),
            p99_ms,
            drift_psi: measured.psi,
            healthy: step.healthy(),
        },
        matches!(step, Step::Wait { .. }),
    );
    let candidate = r.candidate;
    match step {
        Step::Wait { .. } => {}
        Step::Promote => finish(p, model, r, Phase::Promoted, "promoted"),
        Step::Advance { to, .. } => {
            if let Err(e) = set_weights(p, model, r.stable, candidate, to, "rollout") {
                finish(
                    p,
                    model,
                    r,
                    Phase::RolledBack,
                    &format!("cannot set weights: {e}"),
                );
                return;
            }
            r.status.weight = to;
            tracing::info!(model, candidate, weight = to, "rollout step");
        }
        Step::Fail {
            failed_checks,
            ref problems,
            roll_back,
            ..
        } => {
            r.status.failed_checks = failed_checks;
            tracing::warn!(model, candidate, "rollout check failed: {problems}");
            if roll_back {
                finish(p, model, r, Phase::RolledBack, "rolled back");
            }
        }
    }
}

/// What one interval measured of the candidate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Window {
    pub requests: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
    /// The largest PSI of its input features, when it has a drift profile.
    pub psi: Option<f64>,
}

/// The rollout's next step after one interval.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Too few requests for a verdict.
    Wait { requests: u64, needed: u64 },
    /// Healthy below the maximum weight: raise it.
    Advance { from: u64, to: u64 },
    /// Healthy at the maximum weight.
    Promote,
    /// A gate failed; `roll_back` once the threshold of failed checks is met.
    Fail {
        failed_checks: u32,
        threshold: u32,
        problems: String,
        roll_back: bool,
    },
}

impl Step {
    /// The verdict an event records: none while waiting for requests.
    pub(crate) fn healthy(&self) -> Option<bool> {
        match self {
            Step::Wait { .. } => None,
            Step::Advance { .. } | Step::Promote => Some(true),
            Step::Fail { .. } => Some(false),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Wait { requests, needed } => write!(
                f,
                "waiting: {requests} requests in the window, {needed} needed"
            ),
            Step::Advance { from, to } => write!(f, "healthy: {from} → {to}%"),
            Step::Promote => write!(f, "healthy at the maximum weight: promoted"),
            Step::Fail {
                failed_checks,
                threshold,
                problems,
                ..
            } => write!(f, "failed check {failed_checks}/{threshold}: {problems}"),
        }
    }
}

/// The rollout's state machine: given the spec, the candidate's weight, the
/// checks failed so far and one window's measurements, the next step.
pub(crate) fn judge(spec: &RolloutSpec, weight: u64, failed_checks: u32, w: &Window) -> Step {
    if w.requests < spec.min_requests {
        return Step::Wait {
            requests: w.requests,
            needed: spec.min_requests,
        };
    }
    let mut problems = Vec::new();
    if w.error_rate > spec.max_error_rate {
        problems.push(format!(
            "error rate {:.4} > {}",
            w.error_rate, spec.max_error_rate
        ));
    }
    if let (Some(max), Some(p99)) = (spec.max_p99_latency_ms, w.p99_ms) {
        if p99 > max {
            problems.push(format!("p99 {p99:.2} ms > {max} ms"));
        }
    }
    if let (Some(max), Some(psi)) = (spec.max_drift_psi, w.psi) {
        if psi > max {
            problems.push(format!("input drift PSI {psi:.3} > {max}"));
        }
    }
    if !problems.is_empty() {
        let failed_checks = failed_checks + 1;
        return Step::Fail {
            failed_checks,
            threshold: spec.threshold,
            problems: problems.join("; "),
            roll_back: failed_checks >= spec.threshold,
        };
    }
    if weight >= spec.max_weight {
        return Step::Promote;
    }
    Step::Advance {
        from: weight,
        to: (weight + spec.step_weight).min(spec.max_weight),
    }
}

fn finish(p: &mut dyn Policies, model: &str, r: &mut Run, phase: Phase, why: &str) {
    let weight = if phase == Phase::Promoted { 100 } else { 0 };
    if let Err(e) = set_weights(
        p,
        model,
        r.stable,
        r.candidate,
        weight,
        &format!("rollout {why}"),
    ) {
        tracing::error!(model, error = %e, "rollout could not set its final weights");
    }
    let s = &mut r.status;
    s.phase = phase;
    s.weight = weight;
    s.history.push(Event::note(why.to_string(), weight));
    tracing::info!(model, candidate = r.candidate, phase = ?phase, "rollout {why}");
}

/// The largest PSI of the candidate's input features, when it is monitored.
pub(crate) fn candidate_psi(models: &Models, model: &str, candidate: u64) -> Option<f64> {
    let m = models.model(model).ok()?;
    let Some(crate::serving::VersionState::Ready(mv)) = m.versions.get(&candidate) else {
        return None;
    };
    let report = mv.observer::<crate::control::drift::Monitor>()?.report();
    (report.rows > 0).then(|| {
        report
            .features
            .iter()
            .filter(|f| f.side == crate::control::drift::profile::Side::Input)
            .map(|f| f.psi)
            .fold(0.0, f64::max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        serde_json::from_value(serde_json::json!({
            "candidate": "2", "step_weight": 20, "max_weight": 50, "threshold": 2,
            "max_error_rate": 0.05, "max_p99_latency_ms": 10.0, "max_drift_psi": 0.2,
            "min_requests": 10
        }))
        .unwrap()
    }

    fn healthy() -> Window {
        Window {
            requests: 100,
            error_rate: 0.0,
            p99_ms: Some(1.0),
            psi: Some(0.01),
        }
    }

    #[test]
    fn a_healthy_candidate_steps_up_to_the_maximum_then_is_promoted() {
        let (s, w) = (spec(), healthy());
        assert_eq!(judge(&s, 0, 0, &w), Step::Advance { from: 0, to: 20 });
        assert_eq!(judge(&s, 40, 0, &w), Step::Advance { from: 40, to: 50 });
        assert_eq!(judge(&s, 50, 0, &w), Step::Promote);
    }

    #[test]
    fn too_few_requests_give_no_verdict() {
        let w = Window {
            requests: 9,
            error_rate: 1.0,
            ..healthy()
        };
        assert_eq!(
            judge(&spec(), 20, 1, &w),
            Step::Wait {
                requests: 9,
                needed: 10
            }
        );
    }

    #[test]
    fn each_gate_fails_a_check_and_the_threshold_rolls_back() {
        let s = spec();
        for (w, says) in [
            (
                Window {
                    error_rate: 0.5,
                    ..healthy()
                },
                "error rate",
            ),
            (
                Window {
                    p99_ms: Some(11.0),
                    ..healthy()
                },
                "p99",
            ),
            (
                Window {
                    psi: Some(0.3),
                    ..healthy()
                },
                "PSI",
            ),
        ] {
            let Step::Fail {
                failed_checks,
                problems,
                roll_back,
                ..
            } = judge(&s, 20, 0, &w)
            else {
                panic!("{says} should fail the check");
            };
            assert_eq!((failed_checks, roll_back), (1, false));
            assert!(problems.contains(says), "{problems}");
            let second = judge(&s, 20, 1, &w);
            assert!(
                matches!(
                    second,
                    Step::Fail {
                        roll_back: true,
                        ..
                    }
                ),
                "{second:?}"
            );
        }
    }

    #[test]
    fn an_unmeasured_gate_passes() {
        let w = Window {
            p99_ms: None,
            psi: None,
            ..healthy()
        };
        assert_eq!(judge(&spec(), 0, 0, &w), Step::Advance { from: 0, to: 20 });
    }
}
