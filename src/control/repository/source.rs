//! Where model versions come from: a source lists models and their versions and
//! materialises one version as a local directory. The filesystem repository is
//! one source; the MLflow Model Registry is another.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::core::config::ModelConfig;
use crate::core::error::{Error, Result};

/// One model as a source offers it now.
#[derive(Debug, Clone)]
pub struct ModelListing {
    pub name: String,
    /// Its `config.toml`, or why it cannot be read.
    pub config: std::result::Result<ModelConfig, String>,
    /// Changes whenever the configuration does.
    pub config_fingerprint: u64,
    /// Version → a fingerprint of its files: a version whose fingerprint differs
    /// between two listings is still being written, or was replaced.
    pub versions: BTreeMap<u64, u64>,
    /// The version the source names as the default (an MLflow alias); `None`:
    /// the highest version served.
    pub default: Option<u64>,
    /// Why the source offers no version (a missing alias), for the model's state.
    pub problem: Option<String>,
    /// The source vouches that every version listed is complete (MLflow's READY),
    /// so none waits for a second scan.
    pub complete: bool,
    /// Alias → version (MLflow's aliases): aliased versions are served besides
    /// those of the version policy, and traffic policies may weight them by name.
    pub aliases: BTreeMap<String, u64>,
}

/// A model registry the watcher follows.
pub trait Source: Send + Sync {
    /// What the logs call it.
    fn describe(&self) -> String;
    /// Every model on offer, sorted by name.
    fn list(&self) -> Result<Vec<ModelListing>>;
    /// One model; `None` when the source does not have it.
    fn list_one(&self, name: &str) -> Result<Option<ModelListing>>;
    /// A local directory with the files of one version.
    fn materialize(&self, model: &str, version: u64) -> Result<PathBuf>;
    /// Directories whose changes should trigger a rescan at once (the poll is the
    /// fallback); empty for sources that are only polled.
    fn watch_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// The filesystem repository: `DIR/<model>/[config.toml]`, `DIR/<model>/<version>/`.
///
/// A version folder is complete when its files stay unchanged across two scans;
/// hidden folders (`.3.tmp`) are never versions, so the safe way to publish is to
/// write a version under a hidden name and rename it into place.
pub struct FsSource {
    root: PathBuf,
}

impl FsSource {
    pub fn new(root: PathBuf) -> Self {
        FsSource { root }
    }
}

/// What a model folder offers: its configuration and its versions' fingerprints.
fn listing(dir: &super::ModelDir) -> ModelListing {
    let config_path = dir.path.join("config.toml");
    ModelListing {
        name: dir.name.clone(),
        config: ModelConfig::load(&dir.path).map_err(|e| e.to_string()),
        config_fingerprint: file_fingerprint(&config_path),
        versions: dir
            .versions
            .iter()
            .map(|(&v, path)| (v, tree_fingerprint(path)))
            .collect(),
        default: None,
        problem: None,
        complete: false,
        aliases: BTreeMap::new(),
    }
}

impl Source for FsSource {
    fn describe(&self) -> String {
        format!("repository {}", self.root.display())
    }

    fn list(&self) -> Result<Vec<ModelListing>> {
        Ok(super::scan(&self.root)?.iter().map(listing).collect())
    }

    fn list_one(&self, name: &str) -> Result<Option<ModelListing>> {
        match super::find(&self.root, name) {
            Ok(d) => Ok(Some(listing(&d))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn materialize(&self, model: &str, version: u64) -> Result<PathBuf> {
        let path = self.root.join(model).join(version.to_string());
        if path.is_dir() {
            Ok(path)
        } else {
            Err(Error::load(format!("{} is gone", path.display())))
        }
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![self.root.clone()]
    }
}

/// One model's folder served under a name (`--model-name`): what KServe's
/// storage initializer, SageMaker and Vertex AI hand a container. The folder
/// is read at each scan, as one of:
/// - a model file (`model.onnx`, `model.safetensors`) at its top: version 1;
/// - numbered version folders: those versions;
/// - otherwise a repository of model folders, served as `--models` serves it
///   (a Triton-style repository still works).
pub struct NamedSource {
    name: String,
    root: PathBuf,
    repository: FsSource,
}

/// How a [`NamedSource`]'s folder is laid out now.
enum Layout {
    Flat,
    Versions,
    Repository,
}

impl NamedSource {
    pub fn new(name: String, root: PathBuf) -> Result<Self> {
        super::check_name(&name)?;
        Ok(NamedSource {
            name,
            repository: FsSource::new(root.clone()),
            root,
        })
    }

    fn layout(&self) -> Layout {
        let has = |f: &str| self.root.join(f).is_file();
        if has("model.onnx") || has("model.safetensors") {
            return Layout::Flat;
        }
        let numbered = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                e.path().is_dir() && !n.starts_with('0') && n.parse::<u64>().is_ok_and(|v| v > 0)
            });
        if numbered {
            Layout::Versions
        } else {
            Layout::Repository
        }
    }

    /// The one model, when the folder is one model's.
    fn model(&self) -> Option<super::ModelDir> {
        match self.layout() {
            Layout::Flat => Some(super::ModelDir {
                name: self.name.clone(),
                path: self.root.clone(),
                versions: BTreeMap::from([(1, self.root.clone())]),
            }),
            Layout::Versions => Some(super::model_dir(self.name.clone(), self.root.clone())),
            Layout::Repository => None,
        }
    }
}

impl Source for NamedSource {
    fn describe(&self) -> String {
        format!("model '{}' in {}", self.name, self.root.display())
    }

    fn list(&self) -> Result<Vec<ModelListing>> {
        if !self.root.is_dir() {
            return Err(Error::load(format!(
                "cannot read the model folder {}",
                self.root.display()
            )));
        }
        match self.model() {
            Some(dir) => Ok(vec![listing(&dir)]),
            None => self.repository.list(),
        }
    }

    fn list_one(&self, name: &str) -> Result<Option<ModelListing>> {
        match self.model() {
            Some(dir) if name == self.name => Ok(Some(listing(&dir))),
            Some(_) => Ok(None),
            None => self.repository.list_one(name),
        }
    }

    fn materialize(&self, model: &str, version: u64) -> Result<PathBuf> {
        match self.model() {
            Some(dir) if model == self.name => {
                dir.versions.get(&version).cloned().ok_or_else(|| {
                    Error::load(format!("{} has no version {version}", self.describe()))
                })
            }
            Some(_) => Err(Error::not_found(format!(
                "{} has no model '{model}'",
                self.describe()
            ))),
            None => self.repository.materialize(model, version),
        }
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![self.root.clone()]
    }
}

/// Several sources as one: their models side by side (a name offered by two goes
/// to the first).
pub struct Combined {
    sources: Vec<Box<dyn Source>>,
    /// Which source listed each model last, for `materialize`.
    owner: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Combined {
    pub fn new(sources: Vec<Box<dyn Source>>) -> Self {
        Combined {
            sources,
            owner: Default::default(),
        }
    }

    fn own(&self, name: &str, i: usize) {
        self.owner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), i);
    }
}

impl Source for Combined {
    fn describe(&self) -> String {
        let parts: Vec<String> = self.sources.iter().map(|s| s.describe()).collect();
        parts.join(" and ")
    }

    fn list(&self) -> Result<Vec<ModelListing>> {
        let mut out: Vec<ModelListing> = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            for l in s.list()? {
                if out.iter().any(|o| o.name == l.name) {
                    tracing::warn!(model = %l.name, source = %s.describe(), "skipped: another source already offers a model of that name");
                    continue;
                }
                self.own(&l.name, i);
                out.push(l);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn list_one(&self, name: &str) -> Result<Option<ModelListing>> {
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(l) = s.list_one(name)? {
                self.own(name, i);
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    fn materialize(&self, model: &str, version: u64) -> Result<PathBuf> {
        let i = self
            .owner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .copied()
            .ok_or_else(|| Error::not_found(format!("no source offers model '{model}'")))?;
        self.sources[i].materialize(model, version)
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        self.sources.iter().flat_map(|s| s.watch_paths()).collect()
    }
}

/// A fingerprint of one file's content; 0 when it does not exist.
fn file_fingerprint(path: &Path) -> u64 {
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut h = std::hash::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        }
        Err(_) => 0,
    }
}

/// A fingerprint of a folder's files: names, sizes and modification times.
pub fn tree_fingerprint(root: &Path) -> u64 {
    let mut entries = Vec::new();
    collect(root, root, &mut entries);
    entries.sort();
    let mut h = std::hash::DefaultHasher::new();
    entries.hash(&mut h);
    h.finish()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64, u128)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        // Hidden entries are never part of a model (a version being written
        // under `.3.tmp`, the state folder `.switchyard` of a flat model folder).
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            collect(root, &path, out);
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.push((rel, meta.len(), mtime));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_changes_with_the_files() {
        let dir = std::env::temp_dir().join(format!("sy-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("model.onnx"), b"abc").unwrap();
        let a = tree_fingerprint(&dir);
        assert_eq!(a, tree_fingerprint(&dir), "stable while nothing changes");
        std::fs::write(dir.join("sub/extra"), b"x").unwrap();
        let b = tree_fingerprint(&dir);
        assert_ne!(a, b);
        std::fs::write(dir.join("model.onnx"), b"abcd").unwrap();
        assert_ne!(b, tree_fingerprint(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
