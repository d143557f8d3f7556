//! Keeps the model table in step with a source, in three steps that the
//! control plane ([`crate::control::plane`]) drives: [`Repository::prepare`]
//! diffs the versions a model should serve (complete ones, through its version
//! policy) against those it serves, on the plane's thread and without I/O;
//! [`Loader::build`] loads and warms up the new versions on a load thread
//! (downloads and ONNX Runtime loads take minutes); [`Repository::commit`]
//! publishes the result with one table swap, back on the plane's thread, and
//! the old versions retire, drain and free.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::config::{ModelConfig, VersionPolicy};
use crate::core::error::{Error, Result};
use crate::serving::{Model, ModelVersion, Models, Publisher, Traffic, TrafficSpec, VersionState};

use super::reconcile;
use super::source::{ModelListing, Source};

/// Who decides what is loaded (Triton's `--model-control-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlMode {
    /// Follow the source: rescan on change and every poll interval.
    Poll,
    /// Load what the source has at start; afterwards only the repository API loads and unloads.
    Explicit,
    /// Load what the source has at start, and never change it.
    None,
}

/// How the repository is followed.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: ControlMode,
    pub poll_interval: Duration,
    /// Refuse a load that would take the process past this many bytes of RSS.
    pub memory_limit: Option<u64>,
    /// Where traffic policies set over the admin API are kept, and read
    /// from; none: not kept.
    pub policies: Option<crate::control::policy::PolicyStore>,
    /// How `warmup/*.json` files are read (the V2 codec's decoder).
    pub warmup_decoder: super::warmup::Decoder,
}

/// The repository's side of the control plane: what it remembers between
/// scans, and the one handle that publishes the table. Owned by the plane's
/// thread, so none of it is locked.
pub(crate) struct Repository {
    source: Arc<dyn Source>,
    table: Publisher,
    opts: Options,
    /// Each model's versions and fingerprints as the previous scan saw them.
    seen: HashMap<String, BTreeMap<u64, u64>>,
    /// When each (model, version, fingerprint) was first seen: detection time.
    first_seen: HashMap<(String, u64, u64), Instant>,
    /// What the table holds, as fingerprints of what it was loaded from.
    applied: HashMap<String, Applied>,
    /// Models unloaded by request: scans leave them alone until a load.
    unloaded: HashSet<String>,
    /// Fingerprint of the traffic policy each model was last given (state file or
    /// config.toml), and of one that could not be applied (logged once).
    traffic_applied: HashMap<String, u64>,
    traffic_refused: HashMap<String, u64>,
    /// Counts the changes to each model that a load did not make (an unload,
    /// a removal) and the loads published: a load planned before one is stale.
    generation: HashMap<String, u64>,
}

#[derive(Default, Clone)]
struct Applied {
    config: u64,
    /// Version → fingerprint of the files it was loaded (or failed to load) from.
    versions: BTreeMap<u64, u64>,
}

/// What one model's load thread is given: the plan and what it was made from.
pub(crate) struct Job {
    pub(crate) name: Arc<str>,
    listing: ModelListing,
    stable: BTreeMap<u64, u64>,
    config: ModelConfig,
    policy: VersionPolicy,
    plan: reconcile::Plan,
    current: Option<Arc<Model>>,
    applied: BTreeMap<u64, u64>,
    generation: u64,
    /// When the files of each version to load were first seen.
    detected: BTreeMap<u64, Instant>,
}

/// What a load tried, kept apart from its job: if the load thread panics, the
/// plane records it as tried, so that the same files are not retried on
/// every scan.
#[derive(Clone)]
pub(crate) struct Attempt {
    pub(crate) name: String,
    config: u64,
    versions: Vec<(u64, u64)>,
    generation: u64,
}

impl Job {
    pub(crate) fn attempt(&self) -> Attempt {
        Attempt {
            name: self.name.to_string(),
            config: self.listing.config_fingerprint,
            versions: self
                .plan
                .load
                .iter()
                .map(|v| (*v, self.stable[v]))
                .collect(),
            generation: self.generation,
        }
    }
}

/// What a load thread sends back to be published.
pub(crate) struct Built {
    job: Job,
    model: Model,
    /// Versions loaded or tried, whose fingerprints are now applied.
    tried: Vec<u64>,
    retired: Vec<u64>,
}

/// What load threads share: how to fetch, load and warm up a version.
pub(crate) struct Loader {
    source: Arc<dyn Source>,
    models: Arc<Models>,
    memory_limit: Option<u64>,
    warmup_decoder: super::warmup::Decoder,
}

/// What one load of a version took.
struct Loaded {
    version: ModelVersion,
    load: Duration,
    warmup: Duration,
}

/// How soon a scan that saw a version still changing is repeated: a version
/// counts once two scans see the same files.
pub(crate) const SETTLE: Duration = Duration::from_millis(300);

impl Repository {
    pub(crate) fn new(source: Box<dyn Source>, table: Publisher, opts: Options) -> Self {
        Repository {
            source: Arc::from(source),
            table,
            opts,
            seen: HashMap::new(),
            first_seen: HashMap::new(),
            applied: HashMap::new(),
            unloaded: HashSet::new(),
            traffic_applied: HashMap::new(),
            traffic_refused: HashMap::new(),
            generation: HashMap::new(),
        }
    }

    pub(crate) fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    pub(crate) fn options(&self) -> &Options {
        &self.opts
    }

    pub(crate) fn models(&self) -> &Arc<Models> {
        self.table.models()
    }

    pub(crate) fn describe(&self) -> String {
        self.source.describe()
    }

    /// What load threads need, shared.
    pub(crate) fn loader(&self) -> Arc<Loader> {
        Arc::new(Loader {
            source: self.source.clone(),
            models: self.table.models().clone(),
            memory_limit: self.opts.memory_limit,
            warmup_decoder: self.opts.warmup_decoder,
        })
    }

    /// Gives up the publishing handle: the plane stops.
    pub(crate) fn into_publisher(self) -> Publisher {
        self.table
    }

    /// Marks the initial load done; the server reports ready from then on.
    pub(crate) fn set_loaded(&self) {
        self.table.set_loaded();
    }

    fn bump(&mut self, name: &str) {
        *self.generation.entry(name.to_string()).or_default() += 1;
    }

    /// Takes in one scan of the source: records what each listing holds and
    /// returns the loads to run, for the models whose versions all count
    /// (`first`: the files were there before the server started) and that
    /// `busy` does not name (a load of theirs runs). Applies the rest at once:
    /// models gone from the source are removed, policies synced. Returns
    /// whether some version is still changing.
    pub(crate) fn scan(
        &mut self,
        listings: &[ModelListing],
        first: bool,
        busy: &dyn Fn(&str) -> bool,
        jobs: &mut Vec<Job>,
    ) -> bool {
        let mut settling = false;
        let names: HashSet<&str> = listings.iter().map(|l| l.name.as_str()).collect();
        for l in listings {
            let stable = self.stable_versions(l, first);
            // A model with a version still changing waits for it: acting on part
            // of the change could retire what serves before its successor counts.
            if stable.len() < l.versions.len() {
                settling = true;
                continue;
            }
            if self.unloaded.contains(&l.name) || busy(&l.name) {
                continue;
            }
            match self.prepare(l, stable) {
                Some(job) => jobs.push(job),
                None => self.sync_traffic(&l.name),
            }
        }
        // Models whose folder went away.
        let gone: Vec<String> = self
            .table
            .models()
            .snapshot()
            .models
            .keys()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.table.replace_model(&name, None);
            self.applied.remove(&name);
            self.seen.remove(&name);
            self.unloaded.remove(&name);
            self.bump(&name);
            tracing::info!(model = %name, "removed: it is no longer in the {}", self.source.describe());
        }
        self.first_seen
            .retain(|(m, _, _), _| names.contains(m.as_str()));
        settling
    }

    /// An explicit load: takes the files of `l` as they are now, whatever was
    /// applied or unloaded before. `None` when it is applied at once (a broken
    /// config.toml, say); the caller answers from the table then.
    pub(crate) fn reload(&mut self, l: &ModelListing) -> Option<Job> {
        self.unloaded.remove(&l.name);
        let stable = self.stable_versions(l, true);
        self.applied.remove(&l.name);
        let job = self.prepare(l, stable);
        if job.is_none() {
            self.sync_traffic(&l.name);
        }
        job
    }

    /// What the table says of a model after an explicit load: a refusal for
    /// want of memory stays one (SageMaker's multi-model API answers 507).
    pub(crate) fn load_outcome(&self, name: &str) -> Result<()> {
        let model = self.table.models().model(name)?;
        let Some(r) = model.unavailable_reason() else {
            return Ok(());
        };
        let msg = format!("model '{name}' failed to load: {r}");
        let no_memory = model
            .versions
            .values()
            .any(|s| matches!(s, VersionState::Failed(Error::InsufficientMemory(_))));
        Err(if no_memory {
            Error::InsufficientMemory(msg)
        } else {
            Error::load(msg)
        })
    }

    /// The first step for one model: what it should serve, and the load that
    /// gets it there; `None` when nothing needs loading or it was settled here
    /// (an unreadable config.toml keeps what serves).
    fn prepare(&mut self, l: &ModelListing, stable: BTreeMap<u64, u64>) -> Option<Job> {
        let name: Arc<str> = Arc::from(l.name.as_str());
        let current = self.table.models().snapshot().models.get(&l.name).cloned();
        let applied = self.applied.get(&l.name).cloned().unwrap_or_default();
        let config = match &l.config {
            Ok(c) => c.clone(),
            Err(e) => {
                if applied.config != l.config_fingerprint || current.is_none() {
                    tracing::error!(model = %l.name, error = %e, "config.toml cannot be used; what is loaded keeps serving");
                    self.count_failure();
                    let model = match &current {
                        Some(m) => Model {
                            error: Some(e.clone()),
                            ..Model::clone(m)
                        },
                        None => Model::failed(name, ModelConfig::default(), e.clone()),
                    };
                    self.table.replace_model(&l.name, Some(model));
                    self.applied.entry(l.name.clone()).or_default().config = l.config_fingerprint;
                }
                return None;
            }
        };
        let config_changed = applied.config != l.config_fingerprint || current.is_none();
        let policy = config.version_policy().unwrap_or(VersionPolicy::Latest(1));
        let serving: Vec<u64> = current
            .as_ref()
            .map(|m| m.versions.keys().copied().collect())
            .unwrap_or_default();
        let plan = reconcile::plan(
            &policy,
            &stable,
            &l.aliases,
            &serving,
            &applied.versions,
            config_changed,
        );
        if let Some(m) = current.as_ref().filter(|_| plan.is_empty()) {
            if m.default == l.default {
                if m.error.is_some() && !m.versions.is_empty() {
                    // A config.toml that was broken is readable again.
                    let fixed = Model {
                        error: None,
                        ..Model::clone(m)
                    };
                    self.table.replace_model(&l.name, Some(fixed));
                }
                return None;
            }
        }
        let detected = plan
            .load
            .iter()
            .filter_map(|&v| {
                let seen = self.first_seen.get(&(l.name.clone(), v, stable[&v]))?;
                Some((v, *seen))
            })
            .collect();
        Some(Job {
            detected,
            generation: self.generation.get(&l.name).copied().unwrap_or_default(),
            name,
            listing: l.clone(),
            stable,
            config,
            policy,
            plan,
            current,
            applied: applied.versions,
        })
    }

    fn count_failure(&self) {
        self.table
            .models()
            .load_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last step: publishes what a load thread built, with the traffic
    /// policy and shadow statistics the model has *now* (a policy set while it
    /// loaded is kept). A load overtaken by an unload or a removal is dropped.
    /// Returns the answer to an explicit load.
    pub(crate) fn commit(&mut self, built: Built) -> Result<()> {
        let Built {
            job,
            mut model,
            tried,
            retired,
        } = built;
        let name = job.name.to_string();
        if self.generation.get(&name).copied().unwrap_or_default() != job.generation {
            tracing::info!(model = %name, "a load finished after the model was unloaded or removed; dropped");
            return Err(Error::Unavailable(format!(
                "model '{name}' was unloaded or removed while it loaded"
            )));
        }
        if let Ok(now) = self.table.models().model(&name) {
            model.traffic = now.traffic.clone();
            model.shadow_stats = now.shadow_stats.clone();
        }
        self.table.replace_model(&name, Some(model));
        for v in &retired {
            tracing::info!(model = %name, version = v, "retired: queued requests finish, then it is dropped");
        }
        let a = self.applied.entry(name.clone()).or_default();
        a.config = job.listing.config_fingerprint;
        for v in &tried {
            a.versions.insert(*v, job.stable[v]);
        }
        for v in &retired {
            a.versions.remove(v);
        }
        self.bump(&name);
        self.sync_traffic(&name);
        self.load_outcome(&name)
    }

    /// A load thread panicked: what serves stays, and the files it tried
    /// count as tried (a scan retries them once they change).
    pub(crate) fn crashed(&mut self, attempt: Attempt, why: &str) -> Error {
        self.count_failure();
        tracing::error!(model = %attempt.name, error = why, "loading crashed; what was loaded keeps serving");
        let error = format!("loading model '{}' crashed: {why}", attempt.name);
        let name = attempt.name.as_str();
        if self.generation.get(name).copied().unwrap_or_default() == attempt.generation {
            // Its versions are in the table, as failed where none serves: the
            // plan of a later scan sees them there and does not load them again.
            let mut model = match self.table.models().model(name) {
                Ok(m) => Model::clone(&m),
                Err(_) => Model::failed(Arc::from(name), ModelConfig::default(), error.clone()),
            };
            for (v, _) in &attempt.versions {
                if model.is_ready(*v) {
                    model.failures.insert(*v, error.clone());
                } else {
                    model
                        .versions
                        .insert(*v, VersionState::Failed(Error::load(error.clone())));
                }
            }
            self.table.replace_model(name, Some(model));
            let a = self.applied.entry(attempt.name.clone()).or_default();
            a.config = attempt.config;
            a.versions.extend(attempt.versions);
            self.bump(name);
        }
        Error::load(error)
    }

    /// A model that went from the source while it loaded: the load is
    /// dropped when it ends.
    pub(crate) fn forget(&mut self, name: &str) {
        self.bump(name);
    }

    /// Takes a model out of service; queued requests finish first. A load of
    /// it that runs (`loading`: perhaps its first) is dropped when it ends.
    pub(crate) fn unload(&mut self, name: &str, loading: bool, forget: bool) -> Result<()> {
        if self.opts.mode == ControlMode::None {
            return Err(Error::invalid(
                "models are not unloaded on request: the server runs with --model-control none",
            ));
        }
        let (model, config) = match self.table.models().model(name) {
            Ok(old) => (old.name.clone(), old.config.clone()),
            Err(_) if loading => (Arc::from(name), ModelConfig::default()),
            Err(_) => return Err(Error::not_found(format!("unknown model '{name}'"))),
        };
        if forget {
            self.table.replace_model(name, None);
            self.unloaded.remove(name);
            self.traffic_applied.remove(name);
            self.traffic_refused.remove(name);
        } else {
            let unloaded = Model::failed(model, config, "unloaded by request".into());
            self.table.replace_model(name, Some(unloaded));
            self.unloaded.insert(name.to_string());
        }
        self.applied.remove(name);
        self.bump(name);
        tracing::info!(
            model = name,
            "unloaded by request; queued requests finish first"
        );
        Ok(())
    }

    /// Validates, applies at once and keeps a model's traffic policy; `who`
    /// says where the change came from, for the log.
    pub(crate) fn set_traffic(
        &mut self,
        name: &str,
        spec: TrafficSpec,
        who: &str,
        expect: Option<i64>,
    ) -> Result<Arc<Traffic>> {
        let model = self.table.models().model(name)?;
        let traffic = Arc::new(Traffic::new(spec, &model.ready_numbers(), &model.aliases)?);
        let text = serde_json::to_string_pretty(&traffic.spec).expect("plain data");
        if let Some(store) = &self.opts.policies {
            store.write(name, &text, expect)?;
        }
        // One table swap: a request sees the whole old policy or the whole new one.
        self.table.replace_model(
            name,
            Some(Model {
                traffic: traffic.clone(),
                policy_error: None,
                ..Model::clone(&model)
            }),
        );
        // What it replaced is applied: a later sync changes it only when the
        // state file, config.toml or the aliases change. With a store, the
        // text written is what was applied (the store may already hold a
        // newer change, which the next sync then applies).
        let fp = match &self.opts.policies {
            Some(_) => fingerprint(&format!("{text}{:?}", model.aliases)),
            None => self.policy_source(name, &model).2,
        };
        self.traffic_applied.insert(name.to_string(), fp);
        self.traffic_refused.remove(name);
        tracing::info!(model = name, policy = %serde_json::to_string(&traffic.spec).unwrap_or_default(), by = who, "traffic policy changed");
        Ok(traffic)
    }

    /// Where a model's policy comes from now: the text of its state file,
    /// else of its config.toml, where that is, and a fingerprint that changes
    /// with either or with the aliases (they resolve to versions: when one
    /// moves, the policy is applied again).
    fn policy_source(&self, name: &str, model: &Model) -> (String, &'static str, u64) {
        let stored = self
            .opts
            .policies
            .as_ref()
            .and_then(|s| Some((s.read(name)?, s.origin())));
        let (text, origin) = match stored {
            Some(t) => t,
            None => (
                serde_json::to_string(&model.config.traffic.clone().unwrap_or_default())
                    .unwrap_or_default(),
                "config.toml",
            ),
        };
        let fp = fingerprint(&format!("{text}{:?}", model.aliases));
        (text, origin, fp)
    }

    /// Gives a model the traffic policy of its state file (written by this or
    /// another replica sharing the state directory), else of its config.toml,
    /// when that changed since it was last applied.
    pub(crate) fn sync_traffic(&mut self, name: &str) {
        let Ok(model) = self.table.models().model(name) else {
            return;
        };
        let (text, origin, fp) = self.policy_source(name, &model);
        if self.traffic_applied.get(name) == Some(&fp) {
            return;
        }
        let applied = serde_json::from_str::<TrafficSpec>(&text)
            .map_err(|e| Error::invalid(format!("not a traffic policy: {e}")))
            .and_then(|spec| Traffic::new(spec, &model.ready_numbers(), &model.aliases));
        match applied {
            Ok(t) => {
                let spec = serde_json::to_string(&t.spec).unwrap_or_default();
                self.table.replace_model(
                    name,
                    Some(Model {
                        traffic: Arc::new(t),
                        policy_error: None,
                        ..Model::clone(&model)
                    }),
                );
                self.traffic_applied.insert(name.to_string(), fp);
                self.traffic_refused.remove(name);
                tracing::info!(model = name, policy = %spec, from = origin, "traffic policy applied");
            }
            Err(e) => {
                if self.traffic_refused.insert(name.to_string(), fp) != Some(fp) {
                    tracing::warn!(model = name, from = origin, error = %e, "traffic policy not applied (yet); retried every scan");
                    // GET traffic says why, beside the policy that still serves.
                    self.table.replace_model(
                        name,
                        Some(Model {
                            policy_error: Some(format!(
                                "the policy in {origin} is not applied: {e}"
                            )),
                            ..Model::clone(&model)
                        }),
                    );
                }
            }
        }
    }
    /// The versions of `l` whose files are the same as at the previous scan (all of
    /// them when `first` or when the source vouches for them), and records this scan.
    fn stable_versions(&mut self, l: &ModelListing, first: bool) -> BTreeMap<u64, u64> {
        let now = Instant::now();
        for (&v, &fp) in &l.versions {
            self.first_seen
                .entry((l.name.clone(), v, fp))
                .or_insert(now);
        }
        let prev = self.seen.insert(l.name.clone(), l.versions.clone());
        l.versions
            .iter()
            .filter(|(v, fp)| {
                first || l.complete || prev.as_ref().and_then(|p| p.get(v)) == Some(fp)
            })
            .map(|(&v, &fp)| (v, fp))
            .collect()
    }
}

impl Loader {
    /// The middle step, on a load thread: loads and warms up the versions the
    /// plan names (and stand-ins for a newest version that fails), and builds
    /// the model to publish. A version that failed never replaces one that
    /// serves.
    pub(crate) fn build(&self, job: Job) -> Built {
        let current = job.current.as_deref();
        let old_versions = current.map(|m| m.versions.clone()).unwrap_or_default();
        let mut attempts = BTreeMap::new();
        for &v in &job.plan.load {
            let res = self.load(&job.name, v, &job.config);
            match &res {
                Ok(done) => tracing::info!(
                    model = %job.name,
                    version = v,
                    detect_ms = job.detected.get(&v).map(|t| t.elapsed().saturating_sub(done.load + done.warmup).as_millis() as u64),
                    load_ms = done.load.as_millis() as u64,
                    warmup_ms = done.warmup.as_millis() as u64,
                    max_batch_size = done.version.metadata.max_batch_size,
                    "loaded"
                ),
                Err(e) => {
                    self.count_failure();
                    tracing::error!(model = %job.name, version = v, error = %e, "version failed to load; it does not replace what serves");
                }
            }
            attempts.insert(v, res);
        }
        let mut versions = BTreeMap::new();
        let mut failures = BTreeMap::new();
        for &v in &job.plan.desired {
            match attempts.remove(&v) {
                Some(Ok(done)) => {
                    versions.insert(v, VersionState::Ready(Arc::new(done.version)));
                }
                Some(Err(e)) => match old_versions.get(&v) {
                    Some(old @ VersionState::Ready(_)) => {
                        versions.insert(v, old.clone());
                        failures.insert(v, e.to_string());
                    }
                    _ => {
                        versions.insert(v, VersionState::Failed(e));
                    }
                },
                None => {
                    if let Some(s) = old_versions.get(&v) {
                        versions.insert(v, s.clone());
                    }
                    if let Some(e) = current.and_then(|m| m.failures.get(&v)) {
                        failures.insert(v, e.clone());
                    }
                }
            }
        }
        // While a desired version is not ready, the old ones serve on as long
        // as their files are there.
        let desired_ok = job.plan.desired.iter().all(|v| is_ready(&versions, v));
        let (kept, retired) = reconcile::retirements(
            &job.plan.retire,
            desired_ok,
            |v| is_ready(&old_versions, &v),
            |v| job.listing.versions.contains_key(&v),
        );
        for v in kept {
            versions.insert(v, old_versions[&v].clone());
        }
        let mut tried = job.plan.load.clone();
        self.stand_in(&job, &mut versions, &mut tried);
        let l = &job.listing;
        let error = versions.is_empty().then(|| {
            if let Some(p) = &l.problem {
                p.clone()
            } else if l.versions.is_empty() {
                format!("no version folder (expected {}/1/model.onnx)", l.name)
            } else {
                "no complete version to serve yet".to_string()
            }
        });
        let model = Model {
            name: job.name.clone(),
            config: job.config.clone(),
            versions,
            error,
            default: l.default,
            failures,
            traffic: current.map(|m| m.traffic.clone()).unwrap_or_default(),
            shadow_stats: current.map(|m| m.shadow_stats.clone()).unwrap_or_default(),
            aliases: l.aliases.clone(),
            policy_error: current.and_then(|m| m.policy_error.clone()),
        };
        Built {
            job,
            model,
            tried,
            retired,
        }
    }

    /// `latest = N` with a failed version: the next ones down stand in, so
    /// that a broken newest version does not leave the model without any.
    fn stand_in(
        &self,
        job: &Job,
        versions: &mut BTreeMap<u64, VersionState>,
        tried: &mut Vec<u64>,
    ) {
        let VersionPolicy::Latest(n) = job.policy else {
            return;
        };
        let serving = versions.keys().filter(|v| is_ready(versions, v)).count();
        let mut need = n.min(job.stable.len()).saturating_sub(serving);
        let candidates =
            reconcile::stand_ins(&job.stable, &job.applied, |v| versions.contains_key(&v));
        for v in candidates {
            if need == 0 {
                break;
            }
            tried.push(v);
            match self.load(&job.name, v, &job.config) {
                Ok(done) => {
                    tracing::info!(model = %job.name, version = v, "loaded in place of a newer version that failed");
                    versions.insert(v, VersionState::Ready(Arc::new(done.version)));
                    need -= 1;
                }
                Err(e) => {
                    self.count_failure();
                    tracing::error!(model = %job.name, version = v, error = %e, "version failed to load");
                    versions.insert(v, VersionState::Failed(e));
                }
            }
        }
    }

    fn count_failure(&self) {
        self.models
            .load_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Materialises, loads and warms up one version; refuses it first when the
    /// memory limit leaves no room.
    fn load(&self, name: &Arc<str>, v: u64, config: &ModelConfig) -> Result<Loaded> {
        let dir = self.source.materialize(name, v)?;
        self.check_memory(&dir)?;
        let t0 = Instant::now();
        let version = super::load_version(name, v, &dir, config, self.models.scope())?;
        let load = t0.elapsed();
        let t1 = Instant::now();
        let mut version = version;
        super::warmup::warm_up(&version, &dir, self.warmup_decoder)?;
        let warmup = t1.elapsed();
        version.load_duration = load + warmup;
        Ok(Loaded {
            version,
            load,
            warmup,
        })
    }

    /// A version needs about twice its files in memory while it loads (the file
    /// and ONNX Runtime's own copy); refuses it when that would pass the limit.
    fn check_memory(&self, dir: &Path) -> Result<()> {
        let Some(limit) = self.memory_limit else {
            return Ok(());
        };
        let need = 2 * dir_size(dir);
        let rss = crate::core::sys::rss_bytes().unwrap_or(0);
        if rss + need > limit {
            return Err(Error::InsufficientMemory(format!(
                "not loaded: it needs about {} (twice its files) and the server already uses {} of its --memory-limit {}",
                bytesize::ByteSize(need),
                bytesize::ByteSize(rss),
                bytesize::ByteSize(limit)
            )));
        }
        Ok(())
    }
}

fn is_ready(vs: &BTreeMap<u64, VersionState>, v: &u64) -> bool {
    matches!(vs.get(v), Some(VersionState::Ready(_)))
}

fn fingerprint(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
