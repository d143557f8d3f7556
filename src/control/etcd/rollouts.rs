//! Rollouts shared by a fleet through etcd: a rollout is a record under
//! `rollouts/<model>`, driven by the one replica that holds the lease-bound
//! key `leaders/<model>`, and judged on the whole fleet: every replica
//! publishes its candidate's cumulative counters under a lease-bound
//! `counters/<model>/<replica>`, and the leader sums each replica's change
//! since the window opened. A step writes the record and the traffic policy
//! in one transaction that holds only while the leader still holds its key
//! and the record is the one it read, so a step is never taken twice or
//! skipped, and a leader that died is replaced when its lease expires, from
//! the step recorded. Start, abort and status work on any replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::client::{held_by, modified_at};
use super::store::EtcdStore;
use crate::control::rollout::{self, Event, Phase, RolloutSpec, Status, Step, Window};
use crate::core::error::{Error, Result};
use crate::serving::{Histogram, Models, TrafficSpec};

/// How often the leader looks at the clock: a check is late by this much at most.
const TICK: Duration = Duration::from_millis(200);
/// How often a replica publishes its counters (when they changed): each
/// write reaches every replica's watch, so this bounds a rollout's cost.
const PUBLISH: Duration = Duration::from_secs(1);

/// One replica's cumulative counters of a rollout's candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub candidate: u64,
    pub ok: u64,
    pub fail: u64,
    /// The latency histogram's cumulative bucket counts.
    pub latency: Vec<u64>,
    /// The largest input PSI over its drift window, when monitored.
    pub psi: Option<f64>,
}

/// `rollouts/<model>`: the status every replica answers, and what the
/// leader needs to take the next step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    status: Status,
    stable: u64,
    candidate: u64,
    interval_ms: u64,
    /// Unix seconds at which the next check is due.
    next_at: f64,
    /// Checks taken so far.
    checks: u64,
    /// Each replica's counters when the window opened.
    window: BTreeMap<String, Counters>,
    /// The first window is open (the leader's first look).
    #[serde(default)]
    opened: bool,
}

/// The fleet's rollouts, as one replica sees and drives them.
pub struct FleetRollouts {
    store: Arc<EtcdStore>,
    models: Arc<Models>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl FleetRollouts {
    /// Starts publishing counters and campaigning in `scope`.
    pub fn start(
        store: Arc<EtcdStore>,
        models: Arc<Models>,
        scope: &crate::core::tasks::Scope,
    ) -> Arc<FleetRollouts> {
        let me = Arc::new(FleetRollouts { store, models });
        let (run, stop) = (me.clone(), scope.token().clone());
        scope.spawn(async move { run.drive(stop).await });
        me
    }

    fn record(&self, model: &str) -> Option<(Record, i64)> {
        let stored = self.store.get(&format!("rollouts/{model}"))?;
        let record = serde_json::from_str(&stored.value).ok()?;
        Some((record, stored.revision))
    }

    fn with_leader(&self, model: &str, mut status: Status) -> Status {
        status.leader = self.store.get(&format!("leaders/{model}")).map(|l| l.value);
        status
    }

    pub fn status(&self, model: &str) -> Result<Status> {
        self.record(model)
            .map(|(r, _)| self.with_leader(model, r.status))
            .ok_or_else(|| Error::not_found(format!("no rollout of '{model}'")))
    }

    pub fn all(&self) -> Vec<Status> {
        self.store
            .list("rollouts")
            .into_iter()
            .filter_map(|(m, v)| {
                let r: Record = serde_json::from_str(&v.value).ok()?;
                Some(self.with_leader(&m, r.status))
            })
            .collect()
    }

    /// Starts a rollout for the whole fleet: its record and first weights in
    /// one write, unless another is in progress (or started meanwhile).
    pub async fn start_rollout(&self, model: &str, spec: RolloutSpec, who: &str) -> Result<Status> {
        let plan = rollout::plan(&self.models, model, &spec)?;
        let existing = self.record(model);
        if existing
            .as_ref()
            .is_some_and(|(r, _)| r.status.phase == Phase::Progressing)
        {
            return Err(Error::invalid(format!(
                "a rollout of '{model}' is in progress: DELETE it first"
            )));
        }
        let (stable, candidate) = (plan.stable, plan.candidate);
        let record = Record {
            status: Status::started(model, spec, stable, candidate, who),
            stable,
            candidate,
            interval_ms: plan.interval.as_millis() as u64,
            next_at: unix_now() + plan.interval.as_secs_f64(),
            checks: 0,
            // Filled by the leader's first look: the fleet's counters now.
            window: BTreeMap::new(),
            opened: false,
        };
        let revision = existing.map_or(0, |(_, r)| r);
        if !self.commit(model, &record, revision, None).await? {
            return Err(Error::Conflict(format!(
                "another replica started or changed the rollout of '{model}' meanwhile: GET it"
            )));
        }
        tracing::info!(
            model,
            candidate,
            stable,
            weight = record.status.weight,
            by = who,
            "fleet rollout started"
        );
        Ok(record.status)
    }

    /// Aborts the rollout in progress: the stable version gets everything.
    pub async fn abort(&self, model: &str, who: &str) -> Result<Status> {
        for _ in 0..5 {
            let (mut record, revision) = self
                .record(model)
                .ok_or_else(|| Error::not_found(format!("no rollout of '{model}'")))?;
            if record.status.phase != Phase::Progressing {
                return Ok(self.with_leader(model, record.status));
            }
            record.status.phase = Phase::Aborted;
            record.status.weight = 0;
            record
                .status
                .history
                .push(Event::note(format!("aborted by {who}"), 0));
            if self.commit(model, &record, revision, None).await? {
                tracing::info!(model, by = who, "fleet rollout aborted");
                return Ok(record.status);
            }
            // The leader stepped meanwhile: abort what it wrote.
            tokio::time::sleep(TICK).await;
        }
        Err(Error::Conflict(format!(
            "the rollout of '{model}' kept changing while it was aborted: try again"
        )))
    }

    /// Writes `record` and the weights it sets in one transaction, if the
    /// record is still at `revision` (and, for a leader's step, the leader
    /// still holds its key with `lease`).
    async fn commit(
        &self,
        model: &str,
        record: &Record,
        revision: i64,
        lease: Option<i64>,
    ) -> Result<bool> {
        let current = self
            .models
            .model(model)
            .map(|m| m.traffic.spec.clone())
            .unwrap_or_default();
        let policy: TrafficSpec = rollout::weights_policy(
            &current,
            record.stable,
            record.candidate,
            record.status.weight,
        );
        let mut compare = vec![modified_at(
            &self.store.key(&format!("rollouts/{model}")),
            revision,
        )];
        if let Some(lease) = lease {
            compare.push(held_by(&self.store.key(&format!("leaders/{model}")), lease));
        }
        let mut puts = vec![(
            format!("rollouts/{model}"),
            serde_json::to_string(record).expect("plain data"),
            0,
        )];
        let weights = serde_json::to_string_pretty(&policy).expect("plain data");
        let key = crate::control::policy::traffic_key(model);
        if self.store.get(&key).is_none_or(|s| s.value != weights) {
            puts.push((key, weights, 0));
        }
        self.store.write_if(compare, puts).await
    }

    /// Every tick: publishes this replica's counters of each candidate in
    /// progress, campaigns for the rollouts without a leader, and takes the
    /// steps that fall due on those it leads.
    async fn drive(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        // What this replica published under which lease: a new lease (a
        // reconnection) publishes again, since the old keys went with it.
        let mut published: BTreeMap<String, (Counters, std::time::Instant, i64)> = BTreeMap::new();
        while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
            let lease = self.store.lease();
            if lease == 0 {
                continue;
            }
            let replica = self.store.replica().to_string();
            for (model, stored) in self.store.list("rollouts") {
                let Ok(record) = serde_json::from_str::<Record>(&stored.value) else {
                    continue;
                };
                let leading = self.leads(&model, lease);
                metrics::gauge!("switchyard_rollout_leader", "model" => model.clone()).set(
                    if leading && record.status.phase == Phase::Progressing {
                        1.0
                    } else {
                        0.0
                    },
                );
                if record.status.phase != Phase::Progressing {
                    continue;
                }
                let mine = self.counters(&model, record.candidate);
                let due = published.get(&model).is_none_or(|(last, at, under)| {
                    *under != lease || (*last != mine && at.elapsed() >= PUBLISH)
                });
                if due {
                    let key = format!("counters/{model}/{replica}");
                    let text = serde_json::to_string(&mine).expect("plain data");
                    if self.store.put(&key, &text, lease).await.is_ok() {
                        published.insert(model.clone(), (mine, std::time::Instant::now(), lease));
                    }
                }
                if !leading {
                    if self.store.get(&format!("leaders/{model}")).is_none()
                        && self
                            .store
                            .acquire(&format!("leaders/{model}"), &replica, lease)
                            .await
                            .unwrap_or(false)
                    {
                        tracing::info!(
                            model,
                            replica,
                            step = record.checks,
                            weight = record.status.weight,
                            "leading the fleet's rollout"
                        );
                    }
                    continue;
                }
                if let Err(e) = self.step(&model, record, stored.revision, lease).await {
                    tracing::warn!(model, error = %e, "rollout step not taken; retried");
                }
            }
        }
    }

    fn leads(&self, model: &str, lease: i64) -> bool {
        self.store
            .get(&format!("leaders/{model}"))
            .is_some_and(|l| l.lease == lease && l.value == self.store.replica())
    }

    /// This replica's counters of `candidate` now.
    fn counters(&self, model: &str, candidate: u64) -> Counters {
        let (ok, fail, latency) =
            rollout::counts(&self.models, model, candidate).unwrap_or_default();
        Counters {
            candidate,
            ok,
            fail,
            latency,
            psi: rollout::candidate_psi(&self.models, model, candidate),
        }
    }

    /// The fleet's counters of `candidate`, by replica, as published.
    fn fleet_counters(&self, model: &str, candidate: u64) -> BTreeMap<String, Counters> {
        self.store
            .list(&format!("counters/{model}"))
            .into_iter()
            .filter_map(|(replica, v)| {
                let c: Counters = serde_json::from_str(&v.value).ok()?;
                (c.candidate == candidate).then_some((replica, c))
            })
            .collect()
    }

    /// The leader's work on one rollout: opens the first window, and judges
    /// each one when it is due.
    async fn step(&self, model: &str, mut record: Record, revision: i64, lease: i64) -> Result<()> {
        let now = unix_now();
        let fleet = self.fleet_counters(model, record.candidate);
        if !record.opened {
            // The first window opens at the counters the fleet has now.
            record.window = fleet;
            record.opened = true;
            self.commit(model, &record, revision, Some(lease)).await?;
            return Ok(());
        }
        if now < record.next_at {
            return Ok(());
        }
        let measured = window(&record.window, &fleet);
        let status = &mut record.status;
        let step = rollout::judge(&status.spec, status.weight, status.failed_checks, &measured);
        rollout::record_check(
            &mut status.history,
            Event {
                at: now,
                what: format!("{step} (fleet: {} replicas)", fleet.len()),
                weight: status.weight,
                requests: Some(measured.requests),
                error_rate: Some(measured.error_rate),
                p99_ms: measured.p99_ms,
                drift_psi: measured.psi,
                healthy: step.healthy(),
            },
            matches!(step, Step::Wait { .. }),
        );
        match &step {
            Step::Wait { .. } => {}
            Step::Promote => {
                status.phase = Phase::Promoted;
                status.weight = 100;
                status.history.push(Event::note("promoted".into(), 100));
            }
            Step::Advance { to, .. } => status.weight = *to,
            Step::Fail {
                failed_checks,
                roll_back,
                ..
            } => {
                status.failed_checks = *failed_checks;
                if *roll_back {
                    status.phase = Phase::RolledBack;
                    status.weight = 0;
                    status.history.push(Event::note("rolled back".into(), 0));
                }
            }
        }
        record.checks += 1;
        record.window = fleet;
        // From the due time, not from now: a late check does not push the
        // rest of the rollout back.
        let interval = record.interval_ms as f64 / 1000.0;
        record.next_at = (record.next_at + interval).max(now + interval / 2.0);
        if self.commit(model, &record, revision, Some(lease)).await? {
            tracing::info!(model, step = record.checks, weight = record.status.weight, phase = ?record.status.phase, "fleet rollout check: {step}");
        }
        Ok(())
    }
}

/// What the fleet's candidate did since the window opened: each replica's
/// change summed. A replica not seen when it opened counts from the next
/// window (its counters may hold what it served before the rollout); one
/// whose counters went back (it restarted) counts from its restart.
fn window(start: &BTreeMap<String, Counters>, now: &BTreeMap<String, Counters>) -> Window {
    let (mut ok, mut fail) = (0u64, 0u64);
    let (mut h0, mut h1): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    let mut psi: Option<f64> = None;
    for (replica, c) in now {
        let zero = Counters::default();
        let Some(mut s) = start.get(replica) else {
            continue;
        };
        if c.ok < s.ok || c.fail < s.fail {
            s = &zero;
        }
        ok += c.ok - s.ok;
        fail += c.fail - s.fail;
        add(&mut h1, &c.latency);
        add(
            &mut h0,
            if s.latency.len() == c.latency.len() {
                &s.latency
            } else {
                &[]
            },
        );
        psi = match (psi, c.psi) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let n = ok + fail;
    if h0.len() < h1.len() {
        h0.resize(h1.len(), 0);
    }
    Window {
        requests: n,
        error_rate: if n > 0 { fail as f64 / n as f64 } else { 0.0 },
        p99_ms: Histogram::quantile(&h0, &h1, 0.99).map(|d| d.as_secs_f64() * 1000.0),
        psi,
    }
}

fn add(sum: &mut Vec<u64>, counts: &[u64]) {
    if sum.len() < counts.len() {
        sum.resize(counts.len(), 0);
    }
    for (s, c) in sum.iter_mut().zip(counts) {
        *s += c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ok: u64, fail: u64) -> Counters {
        Counters {
            candidate: 2,
            ok,
            fail,
            latency: vec![ok + fail, 0],
            psi: None,
        }
    }

    #[test]
    fn a_window_sums_each_replicas_change() {
        let start = BTreeMap::from([("a".to_string(), c(10, 0)), ("b".to_string(), c(50, 5))]);
        // a served 30 more with 3 failures, b restarted and served 20, c is
        // new: it counts from the next window.
        let now = BTreeMap::from([
            ("a".to_string(), c(37, 3)),
            ("b".to_string(), c(18, 2)),
            ("c".to_string(), c(9, 1)),
        ]);
        let w = window(&start, &now);
        assert_eq!(w.requests, 30 + 20);
        assert!((w.error_rate - 5.0 / 50.0).abs() < 1e-9, "{w:?}");
    }
}
