//! The model table: every model the server knows, published through `arc_swap` so
//! requests read it without a lock while loads and unloads replace it whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::ModelVersion;
use crate::config::ModelConfig;
use crate::error::{Error, Result};

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
}

impl Model {
    /// The version that answers when the request names none: the highest ready one.
    pub fn default_version(&self) -> Option<&Arc<ModelVersion>> {
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

/// The live table plus the server's readiness, shared by every protocol front end.
#[derive(Default)]
pub struct Models {
    table: ArcSwap<ModelTable>,
    loaded: AtomicBool,
}

impl Models {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current table; cheap, lock-free, and stable for as long as it is held.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<ModelTable>> {
        self.table.load()
    }

    /// Replaces the whole table at once: a request sees the old table or the new one.
    pub fn publish(&self, table: ModelTable) {
        self.table.store(Arc::new(table));
    }

    /// Marks the initial load done; the server reports ready from then on.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
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
        let model = self.model(name)?;
        match version {
            Some(v) => match model.versions.get(&v) {
                Some(VersionState::Ready(mv)) => Ok(mv.clone()),
                Some(VersionState::Failed(reason)) => Err(Error::Unavailable(format!(
                    "model '{name}' version {v} is not ready: {reason}"
                ))),
                None => Err(Error::not_found(format!(
                    "model '{name}' has no version {v}"
                ))),
            },
            None => model.default_version().cloned().ok_or_else(|| {
                Error::Unavailable(format!(
                    "model '{name}' is not ready: {}",
                    model.unavailable_reason().unwrap_or_default()
                ))
            }),
        }
    }
}
