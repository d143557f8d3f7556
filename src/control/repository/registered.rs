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
#[derive(Default)]
pub struct Registry {
    models: Mutex<BTreeMap<String, PathBuf>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Registry::default())
    }

    fn models(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PathBuf>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `name` at `dir`: 409 if the name is taken, 400 for a name that
    /// cannot be a model's or a folder that is not one.
    pub fn register(&self, name: &str, dir: PathBuf) -> Result<()> {
        if !super::valid_name(name) {
            return Err(Error::invalid(format!(
                "'{name}' is not a model name (letters, digits, '_', '-', '.')"
            )));
        }
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "the model's url {} is not a folder",
                dir.display()
            )));
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
        self.models()
            .remove(name)
            .ok_or_else(|| Error::not_found(format!("model '{name}' is not loaded")))
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
            None => Err(Error::not_found(format!("model '{model}' is not loaded"))),
        }
    }
}
