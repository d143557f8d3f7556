//! Models registered one at a time while the server runs (SageMaker's
//! multi-model API): each a name and the folder the platform unpacked it into,
//! laid out as one model's folder ([`super::NamedSource`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::source::{ModelListing, NamedSource, Source};
use crate::core::error::{Error, Result};

/// The names and folders registered now; shared by the source and the edge
/// that registers them. Not on any request's path: a lock is fine.
pub struct Registry {
    /// Where the platform unpacks models: a registered folder must be in it.
    root: PathBuf,
    models: Mutex<BTreeMap<String, PathBuf>>,
    /// Held across a register-and-load or an unload-and-forget, so that a
    /// DELETE never races the load of the same name.
    pub changes: tokio::sync::Mutex<()>,
}

impl Registry {
    /// Models may be registered from folders under `root` only.
    pub fn new(root: PathBuf) -> Arc<Self> {
        Arc::new(Registry {
            root,
            models: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    fn models(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PathBuf>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `name` at `dir`: 409 if the name is taken, 400 for a name
    /// that cannot be a model's or a folder outside the root (links resolved:
    /// a caller cannot have any folder of the machine read as a model).
    pub fn register(&self, name: &str, dir: PathBuf) -> Result<()> {
        super::check_name(name)?;
        let outside = || {
            Error::invalid(format!(
                "the model's url {} is not a folder under {}",
                dir.display(),
                self.root.display()
            ))
        };
        if !dir.is_absolute() {
            return Err(outside());
        }
        let root = self.root.canonicalize().map_err(|_| outside())?;
        match dir.canonicalize() {
            Ok(real) if real.starts_with(&root) && real != root && real.is_dir() => {}
            _ => return Err(outside()),
        }
        let mut models = self.models();
        if models.contains_key(name) {
            return Err(Error::Conflict(format!("model '{name}' is already loaded")));
        }
        models.insert(name.to_string(), dir);
        Ok(())
    }

    /// Forgets `name`; its folder, or 404.
    pub fn remove(&self, name: &str) -> Result<PathBuf> {
        self.models().remove(name).ok_or_else(|| not_loaded(name))
    }

    /// The folder `name` was registered at.
    pub fn get(&self, name: &str) -> Option<PathBuf> {
        self.models().get(name).cloned()
    }

    /// Every registration, by name.
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        self.models()
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    fn source(&self, name: &str) -> Result<Option<NamedSource>> {
        self.get(name)
            .map(|dir| NamedSource::new(name.to_string(), dir))
            .transpose()
    }
}

/// SageMaker's 404 for a name that is not registered.
pub fn not_loaded(name: &str) -> Error {
    Error::not_found(format!("model '{name}' is not loaded"))
}

/// The registry as a model source: each registered folder is one model.
pub struct RegisteredSource(pub Arc<Registry>);

impl Source for RegisteredSource {
    fn describe(&self) -> String {
        "models registered over the multi-model API".into()
    }

    fn list(&self) -> Result<Vec<ModelListing>> {
        let mut out = Vec::new();
        for (name, _) in self.0.list() {
            if let Some(l) = self.list_one(&name)? {
                out.push(l);
            }
        }
        Ok(out)
    }

    fn list_one(&self, name: &str) -> Result<Option<ModelListing>> {
        match self.0.source(name)? {
            Some(s) => s.list_one(name),
            None => Ok(None),
        }
    }

    fn materialize(&self, model: &str, version: u64) -> Result<PathBuf> {
        match self.0.source(model)? {
            Some(s) => s.materialize(model, version),
            None => Err(not_loaded(model)),
        }
    }
}
