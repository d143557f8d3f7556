//! The model table: every model the server knows, published through `arc_swap` so
//! requests read it without a lock while loads and unloads replace it whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use super::traffic::{ShadowStats, Traffic};
use super::{ModelVersion, ServingConfig};
use crate::core::config::ModelConfig;
use crate::core::config::TrafficSpec;
use crate::core::error::{Error, Result};

/// A version slot: serving, or the reason it is not.
#[derive(Clone)]
pub enum VersionState {
    Ready(Arc<ModelVersion>),
    Failed(String),
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
            });
        }
        let primary = match self.traffic.pick(key, |v| self.is_ready(v)).and_then(ready) {
            Some(mv) => mv,
            None => self.resolve(None)?,
        };
        let shadow = self
            .traffic
            .shadow_this()
            .and_then(ready)
            .filter(|mv| mv.version != primary.version)
            .map(|mv| (mv, self.shadow_stats.clone()));
        Ok(Routed { primary, shadow })
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

/// Loads and unloads on request (the repository API); the watcher implements it.
pub trait ModelControl: Send + Sync {
    /// (Re)loads a model from its source. Blocking: call it off the async runtime.
    fn load(&self, name: &str) -> Result<()>;
    /// Takes a model out of service; queued requests finish first.
    fn unload(&self, name: &str) -> Result<()>;
    /// Validates, applies at once and keeps a model's traffic policy; `who` says
    /// where the change came from, for the log.
    fn set_traffic(&self, name: &str, spec: TrafficSpec, who: &str) -> Result<Arc<Traffic>>;
}

/// Where one request goes: the version that answers, and a shadow that gets a copy.
pub struct Routed {
    pub primary: Arc<ModelVersion>,
    pub shadow: Option<(Arc<ModelVersion>, Arc<ShadowStats>)>,
}

impl Routed {
    /// Runs the request on the primary and answers with it; a shadow copy runs
    /// afterwards on its own task, measured and dropped, and can never fail it.
    pub async fn infer(
        self,
        request: crate::core::request::InferRequest,
    ) -> Result<crate::core::request::InferResponse> {
        let Some((shadow, stats)) = self.shadow else {
            return self.primary.infer(request).await;
        };
        let copy = request.clone();
        let response = self.primary.infer(request).await;
        if let Ok(r) = &response {
            let primary = r.outputs.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let answer = shadow.infer(copy).await.map(|r| r.outputs);
                stats.record(t.elapsed(), &primary, answer);
            });
        }
        response
    }
}

/// The live table plus the server's readiness, shared by every protocol front end.
/// Read-only to all of them: only the [`Publisher`] changes it.
#[derive(Default)]
pub struct Models {
    table: ArcSwap<ModelTable>,
    loaded: AtomicBool,
    /// What serves explicit loads and unloads; unset: they are refused.
    control: OnceLock<Arc<dyn ModelControl>>,
    /// Versions that failed to load or warm up, since the start.
    pub load_failures: AtomicU64,
}

/// The one handle that changes the table: [`Models::new`] makes it once, and
/// the control plane keeps it. That only the control plane publishes is a fact
/// of the types, not a convention.
pub struct Publisher {
    models: Arc<Models>,
    /// Serialises writers, which build a new table from the current one;
    /// readers never take it.
    writer: Mutex<()>,
}

impl Publisher {
    /// The table this handle publishes to.
    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// Replaces one model (`None` removes it) in a new table and publishes it;
    /// returns the model it replaced. Versions dropped from the table keep
    /// serving the requests that already hold them, then free their memory.
    pub fn replace_model(&self, name: &str, model: Option<Model>) -> Option<Arc<Model>> {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = ModelTable::clone(&self.models.snapshot());
        let old = match model {
            Some(m) => table.models.insert(name.to_string(), Arc::new(m)),
            None => table.models.remove(name),
        };
        self.models.table.store(Arc::new(table));
        old
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
    pub fn new() -> (Arc<Models>, Publisher) {
        let models = Arc::new(Models::default());
        let publisher = Publisher {
            models: models.clone(),
            writer: Mutex::new(()),
        };
        (models, publisher)
    }

    /// Hands explicit loads and unloads to `control` (once; later calls are ignored).
    pub fn set_control(&self, control: Arc<dyn ModelControl>) {
        let _ = self.control.set(control);
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
                    VersionState::Failed(r) => (false, r.clone()),
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

    /// (Re)loads one model from its source (the repository API's load).
    pub fn load_model(&self, name: &str) -> Result<()> {
        self.control()?.load(name)
    }

    /// Takes a model out of service (the repository API's unload). It stays
    /// listed, as unavailable, so its state is visible; in-flight requests finish
    /// on the versions they hold.
    pub fn unload_model(&self, name: &str) -> Result<()> {
        self.control()?.unload(name)
    }

    fn control(&self) -> Result<&Arc<dyn ModelControl>> {
        self.control
            .get()
            .ok_or_else(|| Error::Unavailable("this server loads no models on request".into()))
    }

    /// The current table; cheap, lock-free, and stable for as long as it is held.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<ModelTable>> {
        self.table.load()
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

    /// Applies a traffic policy (the admin API's PUT).
    pub fn set_traffic(&self, name: &str, spec: TrafficSpec, who: &str) -> Result<Arc<Traffic>> {
        self.control()?.set_traffic(name, spec, who)
    }

    /// The version a request goes to: the one it names, or the model's default.
    pub fn resolve(&self, name: &str, version: Option<u64>) -> Result<Arc<ModelVersion>> {
        self.model(name)?.resolve(version)
    }
}
