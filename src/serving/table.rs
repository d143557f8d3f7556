//! The model table: every model the server knows, published through `arc_swap` so
//! requests read it without a lock while loads and unloads replace it whole.

use crate::core::request::Routing;
use crate::core::trace::KeyValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::traffic::{ShadowStats, Traffic};
use super::{ModelVersion, ServingConfig};
use crate::core::config::ModelConfig;
use crate::core::error::{Error, Result};
use crate::core::tasks::Scope;

/// A version slot: serving, or why it is not (the error keeps its class: a
/// version refused for want of memory is not a broken one).
#[derive(Clone)]
pub enum VersionState {
    Ready(Arc<ModelVersion>),
    Failed(Error),
}

/// One model of the repository.
#[derive(Clone)]
pub struct Model {
    pub name: Arc<str>,
    pub config: ModelConfig,
    pub versions: BTreeMap<u64, VersionState>,
    /// A problem with the model as a whole (bad config.toml, no versions).
    pub error: Option<String>,
    /// The version the source names as the default (an MLflow alias), if any.
    pub default: Option<u64>,
    /// Versions that serve from earlier files while their newest files failed to
    /// load: version → why.
    pub failures: BTreeMap<u64, String>,
    /// How requests that name no version are split; kept across reloads.
    pub traffic: Arc<Traffic>,
    /// What the shadow version did; kept across reloads and policy changes.
    pub shadow_stats: Arc<ShadowStats>,
    /// Alias → version, from the source (MLflow's aliases).
    pub aliases: BTreeMap<String, u64>,
    /// Why the stored policy (a ConfigMap's, a shared state directory's) is
    /// not the one applied; the last good one serves meanwhile.
    pub policy_error: Option<String>,
}

impl Model {
    /// A model that cannot serve, and why.
    pub fn failed(name: Arc<str>, config: ModelConfig, error: String) -> Model {
        Model {
            name,
            config,
            versions: BTreeMap::new(),
            error: Some(error),
            default: None,
            failures: BTreeMap::new(),
            traffic: Arc::default(),
            shadow_stats: Arc::default(),
            aliases: BTreeMap::new(),
            policy_error: None,
        }
    }

    /// The version a request goes to: the one it names, or the default.
    pub fn resolve(&self, version: Option<u64>) -> Result<Arc<ModelVersion>> {
        let name = &self.name;
        match version {
            Some(v) => match self.versions.get(&v) {
                Some(VersionState::Ready(mv)) => Ok(mv.clone()),
                Some(VersionState::Failed(reason)) => Err(Error::Unavailable(format!(
                    "model '{name}' version {v} is not ready: {reason}"
                ))),
                None => Err(Error::not_found(format!(
                    "model '{name}' has no version {v}"
                ))),
            },
            None => self.default_version().cloned().ok_or_else(|| {
                Error::Unavailable(format!(
                    "model '{name}' is not ready: {}",
                    self.unavailable_reason().unwrap_or_default()
                ))
            }),
        }
    }

    /// Where a request goes: the version it names; or, through the traffic
    /// policy, a version by weight (pinned by `key` when there is one), else the
    /// default version; plus a shadow copy when the policy draws one.
    pub fn route(&self, version: Option<u64>, key: Option<&[u8]>) -> Result<Routed> {
        let ready = |v: u64| match self.versions.get(&v) {
            Some(VersionState::Ready(mv)) => Some(mv.clone()),
            _ => None,
        };
        if version.is_some() {
            let primary = self.resolve(version)?;
            return Ok(Routed {
                primary,
                shadow: None,
                routing: Routing::Named,
            });
        }
        let (primary, routing) = match self.traffic.pick(key, |v| self.is_ready(v)).and_then(ready)
        {
            Some(mv) if key.is_some() => (mv, Routing::Sticky),
            Some(mv) => (mv, Routing::Weighted),
            None => (self.resolve(None)?, Routing::Default),
        };
        let shadow = self
            .traffic
            .shadow_this()
            .and_then(ready)
            .filter(|mv| mv.version != primary.version)
            .map(|mv| (mv, self.shadow_stats.clone()));
        Ok(Routed {
            primary,
            shadow,
            routing,
        })
    }

    /// Whether version `v` is ready.
    pub fn is_ready(&self, v: u64) -> bool {
        matches!(self.versions.get(&v), Some(VersionState::Ready(_)))
    }

    /// The ready version numbers, ascending.
    pub fn ready_numbers(&self) -> Vec<u64> {
        self.versions
            .iter()
            .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
            .map(|(v, _)| *v)
            .collect()
    }

    /// The version that answers when the request names none: the one the source
    /// names if it is ready, else the highest ready one.
    pub fn default_version(&self) -> Option<&Arc<ModelVersion>> {
        if let Some(VersionState::Ready(v)) = self.default.and_then(|d| self.versions.get(&d)) {
            return Some(v);
        }
        self.versions.values().rev().find_map(|v| match v {
            VersionState::Ready(v) => Some(v),
            VersionState::Failed(_) => None,
        })
    }

    pub fn ready_versions(&self) -> impl Iterator<Item = &Arc<ModelVersion>> {
        self.versions.values().filter_map(|v| match v {
            VersionState::Ready(v) => Some(v),
            VersionState::Failed(_) => None,
        })
    }

    /// Why the model cannot serve, if it cannot.
    pub fn unavailable_reason(&self) -> Option<String> {
        if self.default_version().is_some() {
            return None;
        }
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        let reasons: Vec<String> = self
            .versions
            .iter()
            .filter_map(|(v, s)| match s {
                VersionState::Failed(r) => Some(format!("version {v}: {r}")),
                VersionState::Ready(_) => None,
            })
            .collect();
        Some(if reasons.is_empty() {
            "no versions".to_string()
        } else {
            reasons.join("; ")
        })
    }
}

/// An immutable snapshot of all models.
#[derive(Clone, Default)]
pub struct ModelTable {
    pub models: HashMap<String, Arc<Model>>,
}

/// Where one request goes: the version that answers, and a shadow that gets a copy.
pub struct Routed {
    pub primary: Arc<ModelVersion>,
    pub shadow: Option<(Arc<ModelVersion>, Arc<ShadowStats>)>,
    pub routing: Routing,
}

impl Routed {
    /// Runs the request on the primary and answers with it; a shadow copy runs
    /// afterwards on its own task, measured and dropped, and can never fail it.
    pub async fn infer(
        self,
        mut request: crate::core::request::InferRequest,
    ) -> Result<crate::core::request::InferResponse> {
        request.routing = self.routing;
        let Some((shadow, stats)) = self.shadow else {
            return self.primary.infer(request).await;
        };
        let mut copy = request.clone();
        copy.routing = Routing::Shadow;
        copy.trace = None;
        let primary_trace = request.trace.clone();
        let response = self.primary.infer(request).await;
        if let Ok(r) = &response {
            let primary = r.outputs.clone();
            let scope = shadow.scope().clone();
            scope.spawn(async move {
                let t = std::time::Instant::now();
                let span = primary_trace.and_then(|p| {
                    p.shadow(vec![
                        KeyValue::new("switchyard.model", shadow.model.to_string()),
                        KeyValue::new("switchyard.version", shadow.version as i64),
                        KeyValue::new("switchyard.routing", Routing::Shadow.as_str()),
                    ])
                });
                copy.trace = span.as_ref().map(|(_, trace)| trace.clone());
                let answer = shadow.infer(copy).await.map(|r| r.outputs);
                if let Some((span, _)) = span {
                    span.end(answer.as_ref().err().map(ToString::to_string));
                }
                stats.record(t.elapsed(), &primary, answer);
            });
        }
        response
    }
}

/// The live table plus the server's readiness, shared by every protocol front end.
/// Read-only to all of them: only the [`Publisher`] changes it.
pub struct Models {
    table: ArcSwap<ModelTable>,
    loaded: AtomicBool,
    /// Versions that failed to load or warm up, since the start.
    pub load_failures: AtomicU64,
    /// Versions out of the table whose workers still run.
    retiring: ArcSwap<Vec<Retiring>>,
    /// The serving layer's scope of the task tree: worker threads start there.
    scope: Scope,
}

/// How long a retired version's workers may take to finish what it holds
/// before that is logged.
pub const RETIRE_WARN_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// A version taken out of the table (replaced, retired, unloaded) whose worker
/// threads have not all exited: they finish the requests it holds, then stop.
/// One that stays long is pinned by a request that never ends or a backend
/// that hangs, and keeps its memory: it is shown in the metrics and logged.
#[derive(Debug, Clone)]
pub struct Retiring {
    pub model: Arc<str>,
    pub version: u64,
    pub since: std::time::Instant,
    alive: Arc<std::sync::atomic::AtomicUsize>,
    warned: Arc<AtomicBool>,
}

impl Retiring {
    /// Its worker threads still running.
    pub fn workers(&self) -> usize {
        self.alive.load(Ordering::Acquire)
    }
}

/// The one handle that changes the table: [`Models::new`] makes one per
/// table, it is neither `Clone` nor shared, and publishing takes it by `&mut`;
/// the control plane's thread takes it and never lends it. That only the
/// control plane publishes is a fact of the types, not a convention, and
/// writers need no lock.
pub struct Publisher {
    models: Arc<Models>,
}

impl Publisher {
    /// The table this handle publishes to.
    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// Replaces one model (`None` removes it) in a new table and publishes it;
    /// returns the model it replaced. Versions dropped from the table keep
    /// serving the requests that already hold them, then free their memory.
    pub fn replace_model(&mut self, name: &str, model: Option<Model>) -> Option<Arc<Model>> {
        let mut table = ModelTable::clone(&self.models.snapshot());
        let new = model.map(Arc::new);
        let old = match &new {
            Some(m) => table.models.insert(name.to_string(), m.clone()),
            None => table.models.remove(name),
        };
        self.models.table.store(Arc::new(table));
        if let Some(old) = &old {
            self.retire_left(old, new.as_deref());
        }
        old
    }

    /// Records the versions of `old` that `new` no longer holds as retiring,
    /// and forgets retired ones whose workers have all exited.
    fn retire_left(&self, old: &Model, new: Option<&Model>) {
        let kept = |mv: &Arc<ModelVersion>| {
            new.is_some_and(|n| n.ready_versions().any(|k| Arc::ptr_eq(k, mv)))
        };
        let left: Vec<Retiring> = old
            .ready_versions()
            .filter(|mv| !kept(mv))
            .map(|mv| Retiring {
                model: mv.model.clone(),
                version: mv.version,
                since: std::time::Instant::now(),
                alive: mv.workers_alive(),
                warned: Arc::default(),
            })
            .collect();
        self.models.retiring.rcu(|list| {
            let mut list: Vec<Retiring> =
                list.iter().filter(|r| r.workers() > 0).cloned().collect();
            list.extend(left.iter().cloned());
            list
        });
    }

    /// Empties the table, for a shutdown: every version retires, finishes the
    /// requests it holds, and its workers exit.
    pub fn clear(&mut self) {
        let old = self.models.snapshot().models.clone();
        self.models.table.store(Arc::new(ModelTable::default()));
        for m in old.values() {
            self.retire_left(m, None);
        }
    }

    /// Marks the initial load done; the server reports ready from then on.
    pub fn set_loaded(&self) {
        self.models.loaded.store(true, Ordering::Release);
    }
}

/// One row of the repository index: a model version and its state.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub name: String,
    /// `None` for a model that has no version to show.
    pub version: Option<u64>,
    pub ready: bool,
    pub reason: String,
}

impl Models {
    /// An empty table, and the one handle that may change it.
    pub fn new(scope: Scope) -> (Arc<Models>, Publisher) {
        let models = Arc::new(Models {
            table: Default::default(),
            loaded: Default::default(),
            load_failures: Default::default(),
            retiring: Default::default(),
            scope,
        });
        let publisher = Publisher {
            models: models.clone(),
        };
        (models, publisher)
    }

    /// Where the threads and tasks of the versions it serves start.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The Triton-shaped configuration of a version (the default one when `None`).
    pub fn serving_config(&self, name: &str, version: Option<u64>) -> Result<ServingConfig> {
        let model = self.model(name)?;
        let mv = self.resolve(name, version)?;
        Ok(mv.serving_config(&model.config))
    }

    /// The ready versions that statistics are asked of: all models when `name` is
    /// empty, one model, or one version; sorted by name and version.
    pub fn versions_for_stats(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Vec<Arc<ModelVersion>>> {
        let table = self.snapshot();
        let mut names: Vec<&String> = table
            .models
            .keys()
            .filter(|k| name.is_empty() || k.as_str() == name)
            .collect();
        if names.is_empty() && !name.is_empty() {
            return Err(Error::not_found(format!("unknown model '{name}'")));
        }
        names.sort();
        let mut out = Vec::new();
        for n in names {
            for (v, state) in &table.models[n].versions {
                if version.is_some_and(|want| want != *v) {
                    continue;
                }
                if let VersionState::Ready(mv) = state {
                    out.push(mv.clone());
                }
            }
        }
        if let (Some(v), true) = (version, out.is_empty()) {
            return Err(Error::not_found(format!(
                "model '{name}' has no ready version {v}"
            )));
        }
        Ok(out)
    }

    /// Every model and version with its state, sorted by name and version.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let table = self.snapshot();
        let mut names: Vec<&String> = table.models.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let m = &table.models[name];
            if m.versions.is_empty() {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    ready: false,
                    reason: m.unavailable_reason().unwrap_or_default(),
                });
            }
            for (v, s) in &m.versions {
                let (ready, reason) = match s {
                    VersionState::Ready(_) => (
                        true,
                        m.failures.get(v).map_or_else(String::new, |e| {
                            format!("serving earlier files; the newest failed to load: {e}")
                        }),
                    ),
                    VersionState::Failed(r) => (false, r.to_string()),
                };
                out.push(IndexEntry {
                    name: name.clone(),
                    version: Some(*v),
                    ready,
                    reason,
                });
            }
        }
        if ready_only {
            out.retain(|e| e.ready);
        }
        out
    }

    /// The current table; cheap, lock-free, and stable for as long as it is held.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<ModelTable>> {
        self.table.load()
    }

    /// Retired versions whose workers still run. One still running
    /// [`RETIRE_WARN_AFTER`] after it left is logged, once, when it is read
    /// (every `/metrics` scrape reads it).
    pub fn retiring(&self) -> Vec<Retiring> {
        let list: Vec<Retiring> = self
            .retiring
            .load()
            .iter()
            .filter(|r| r.workers() > 0)
            .cloned()
            .collect();
        for r in &list {
            if r.since.elapsed() > RETIRE_WARN_AFTER && !r.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    model = %r.model,
                    version = r.version,
                    workers = r.workers(),
                    "retired {} s ago and still running: a request that does not end or a backend that hangs pins its memory",
                    r.since.elapsed().as_secs()
                );
            }
        }
        list
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn model(&self, name: &str) -> Result<Arc<Model>> {
        self.snapshot()
            .models
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))
    }

    /// The version a request goes to: the one it names, or the model's default.
    pub fn resolve(&self, name: &str, version: Option<u64>) -> Result<Arc<ModelVersion>> {
        self.model(name)?.resolve(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{ShadowSpec, TrafficSpec};
    use crate::core::metadata::ModelMetadata;
    use crate::core::tensor::Tensor;
    use crate::runtime::Backend;
    use crate::serving::{BatchPolicy, Stats, Workers};

    struct Echo;

    impl Backend for Echo {
        fn infer(&mut self, inputs: &[Tensor], _: &[String]) -> Result<Vec<Tensor>> {
            Ok(inputs.to_vec())
        }
    }

    fn version(v: u64) -> VersionState {
        let stats = Arc::new(Stats::new(0));
        let workers = Workers::spawn(
            &Scope::new("test"),
            "m",
            vec![Box::new(Echo)],
            4,
            std::time::Duration::ZERO,
            BatchPolicy::default(),
            stats.clone(),
        )
        .unwrap();
        let metadata = ModelMetadata {
            platform: "test",
            inputs: vec![],
            outputs: vec![],
            max_batch_size: 0,
            optional_outputs: Vec::new(),
        };
        VersionState::Ready(Arc::new(ModelVersion::new(
            Arc::from("m"),
            v,
            metadata,
            workers,
            stats,
        )))
    }

    /// Versions 1 and 2 ready, 3 failed, with `spec` as the policy.
    fn model(spec: TrafficSpec) -> Model {
        let mut m = Model::failed(Arc::from("m"), ModelConfig::default(), String::new());
        m.error = None;
        m.versions = BTreeMap::from([
            (1, version(1)),
            (2, version(2)),
            (3, VersionState::Failed(Error::load("broken"))),
        ]);
        m.traffic = Arc::new(Traffic::new(spec, &m.ready_numbers(), &m.aliases).unwrap());
        m
    }

    fn weights(w: &[(&str, u64)]) -> TrafficSpec {
        TrafficSpec {
            weights: w.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_named_version_wins_over_the_policy_and_a_failed_one_says_why() {
        let m = model(weights(&[("1", 100)]));
        assert_eq!(m.route(Some(2), None).unwrap().primary.version, 2);
        let e = m.route(Some(3), None).err().unwrap();
        assert!(matches!(e, Error::Unavailable(_)) && e.to_string().contains("broken"));
        assert!(matches!(m.route(Some(9), None), Err(Error::NotFound(_))));
    }

    #[test]
    fn no_policy_is_the_highest_ready_version() {
        let m = model(TrafficSpec::default());
        assert_eq!(m.route(None, None).unwrap().primary.version, 2);
    }

    #[test]
    fn weights_split_requests_and_a_key_always_goes_to_one_version() {
        let m = model(weights(&[("1", 75), ("2", 25)]));
        let n = 4000;
        let ones = (0..n)
            .filter(|_| m.route(None, None).unwrap().primary.version == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((0.7..0.8).contains(&share), "version 1 took {share}");
        for user in ["alice", "bob", "carol"] {
            let first = m
                .route(None, Some(user.as_bytes()))
                .unwrap()
                .primary
                .version;
            for _ in 0..20 {
                let again = m.route(None, Some(user.as_bytes())).unwrap();
                assert_eq!(again.primary.version, first, "{user}");
            }
        }
    }

    #[test]
    fn a_shadow_gets_a_copy_but_never_of_its_own_requests() {
        let mut spec = weights(&[("1", 100)]);
        spec.shadow = Some(ShadowSpec {
            version: "2".into(),
            percent: 100.0,
        });
        let m = model(spec);
        let r = m.route(None, None).unwrap();
        assert_eq!(r.primary.version, 1);
        assert_eq!(r.shadow.as_ref().map(|(s, _)| s.version), Some(2));
        let named = m.route(Some(2), None).unwrap();
        assert!(named.shadow.is_none(), "a named version is not shadowed");
    }

    #[test]
    fn only_the_publisher_changes_what_readers_see() {
        let (models, mut publisher) = Models::new(Scope::new("test"));
        assert!(models.model("m").is_err());
        let before = models.snapshot();
        publisher.replace_model("m", Some(model(TrafficSpec::default())));
        assert!(before.models.is_empty(), "a snapshot held stays as it was");
        assert_eq!(models.model("m").unwrap().ready_numbers(), [1, 2]);
        assert!(!models.is_loaded());
        publisher.set_loaded();
        assert!(models.is_loaded());
        publisher.replace_model("m", None);
        assert!(matches!(models.model("m"), Err(Error::NotFound(_))));
    }

    #[test]
    fn a_version_out_of_the_table_is_retiring_until_its_workers_exit() {
        let (models, mut publisher) = Models::new(Scope::new("test"));
        publisher.replace_model("m", Some(model(TrafficSpec::default())));
        assert!(models.retiring().is_empty());
        let held = models.resolve("m", Some(2)).unwrap();
        // Version 2 leaves the table; a request still holds it.
        let mut next = Model::clone(&models.model("m").unwrap());
        next.versions.remove(&2);
        publisher.replace_model("m", Some(next));
        let r = models.retiring();
        assert_eq!(r.iter().map(|r| r.version).collect::<Vec<_>>(), [2]);
        assert_eq!(r[0].workers(), 1);
        drop(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !models.retiring().is_empty() {
            assert!(std::time::Instant::now() < deadline, "workers did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
