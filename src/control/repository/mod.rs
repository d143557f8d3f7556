//! Model repositories: the folder layout on disk, the sources that offer models
//! (filesystem, MLflow), loading one version, and the watcher that keeps the
//! model table in step with a source.

pub mod mlflow;
mod reconcile;
pub mod registered;
pub mod source;
pub(crate) mod warmup;
pub mod watcher;

pub use mlflow::{Follow, MlflowSource};
pub use registered::{RegisteredSource, Registry};
pub use source::{Combined, FsSource, ModelListing, NamedSource, Source};
pub use watcher::{ControlMode, Options};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::config::ModelConfig;
use crate::core::error::{Error, Result};
use crate::core::tasks::Scope;
use crate::runtime;
use crate::serving::{BatchPolicy, ModelVersion, Stats, Workers};

/// One model folder as found on disk.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub name: String,
    pub path: PathBuf,
    /// Version number → version folder.
    pub versions: BTreeMap<u64, PathBuf>,
}

/// Whether a folder name can be a model name: it becomes a URL path segment.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Refuses a name that cannot be a model's, saying which characters can.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "'{name}' is not a model name (letters, digits, '_', '-', '.')"
        )))
    }
}

/// One model folder: its version folders, named by positive integers (others are
/// skipped with a warning).
pub(crate) fn model_dir(name: String, path: PathBuf) -> ModelDir {
    let mut versions = BTreeMap::new();
    if let Ok(vs) = std::fs::read_dir(&path) {
        for v in vs.flatten() {
            let vname = v.file_name().to_string_lossy().into_owned();
            if !v.path().is_dir() || vname.starts_with('.') {
                continue;
            }
            match vname.parse::<u64>() {
                Ok(n) if n > 0 && !vname.starts_with('0') => {
                    versions.insert(n, v.path());
                }
                _ => tracing::warn!(
                    folder = %v.path().display(),
                    "skipped: a version folder is named by a positive integer"
                ),
            }
        }
    }
    ModelDir {
        name,
        path,
        versions,
    }
}

/// Lists `DIR/<model>/<version>/`; a version is a positive integer folder name.
/// Hidden entries, files and oddly named folders are skipped with a warning.
pub fn scan(root: &Path) -> Result<Vec<ModelDir>> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        Error::load(format!(
            "cannot read the model repository {}: {e}",
            root.display()
        ))
    })?;
    let mut models = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_dir() || name.starts_with('.') {
            continue;
        }
        if !valid_name(&name) {
            tracing::warn!(folder = %path.display(), "skipped: a model name may hold only letters, digits, '_', '-' and '.'");
            continue;
        }
        models.push(model_dir(name, path));
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// The folder of one model, for an explicit load. Only names that are model
/// names are looked up, so no request can reach outside the repository.
pub fn find(root: &Path, name: &str) -> Result<ModelDir> {
    if !valid_name(name) {
        return Err(Error::invalid(format!(
            "'{name}' is not a valid model name"
        )));
    }
    let path = root.join(name);
    if !path.is_dir() {
        return Err(Error::not_found(format!(
            "the repository {} has no model '{name}'",
            root.display()
        )));
    }
    Ok(model_dir(name.to_string(), path))
}

/// Loads one version from its folder and starts its workers (not yet warmed up).
pub fn load_version(
    name: &Arc<str>,
    v: u64,
    path: &Path,
    config: &ModelConfig,
    scope: &Scope,
) -> Result<ModelVersion> {
    let loaded = tracing::info_span!("load", model = %name, version = v)
        .in_scope(|| runtime::load(path, config))?;
    let max_batch_size = loaded.metadata.max_batch_size as usize;
    let preferred = config.batching.preferred_batch_size.clone();
    if let Some(&p) = preferred.iter().find(|&&p| p > max_batch_size) {
        return Err(Error::load(format!(
            "config.toml: batching.preferred_batch_size {p} is larger than max_batch_size {max_batch_size}"
        )));
    }
    let stats = Arc::new(Stats::labelled(
        max_batch_size,
        crate::serving::metrics::VersionMetrics::new(name, v),
    ));
    let workers = Workers::spawn(
        scope,
        &format!("{name}/{v}"),
        loaded.instances,
        config.max_queue_size(),
        crate::serving::Spin {
            wait: config.idle_spin(),
            adaptive: config.latency_mode() != crate::core::config::LatencyMode::Latency,
        },
        BatchPolicy {
            max_batch_size,
            max_queue_delay: config.max_queue_delay(),
            priority_levels: config.priorities().0,
            preferred,
            outputs: loaded.metadata.outputs.clone(),
            inline_budget: config.inline_budget(),
        },
        stats.clone(),
    )?;
    let mut version = ModelVersion::new(name.clone(), v, loaded.metadata, workers, stats)
        .with_latency_mode(config.latency_mode());
    if config.drift.enabled != Some(false) {
        if let Some(profile) =
            crate::control::drift::Profile::load(&path.join(crate::control::drift::profile::FILE))?
        {
            version = version.with_observer(crate::control::drift::Monitor::start(
                profile,
                &config.drift,
                &format!("{name}/{v}"),
                scope,
            )?);
        }
    }
    if let Some(capture) = config.capture.effective()? {
        let c =
            crate::control::capture::Capture::start(&capture, name, v, &version.metadata, scope)?;
        version = version.with_observer(c);
    }
    Ok(version
        .with_default_timeout(config.default_timeout())
        .with_priorities(config.priorities().0, config.priorities().1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("iris-v2.final_1"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("x/y"));
    }
}
