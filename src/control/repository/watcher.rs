//! Keeps the model table in step with a source: diffs the versions each model
//! should serve (complete versions, through its version policy) against those it
//! serves, loads and warms up the new ones off the request path, publishes them
//! with one table swap, then retires the old ones, which drain and free.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::config::ModelConfig;
use crate::core::error::{Error, Result};
use crate::serving::{
    Model, ModelControl, ModelVersion, Publisher, Traffic, TrafficSpec, VersionState,
};

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

/// How the watcher runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: ControlMode,
    pub poll_interval: Duration,
    /// Refuse a load that would take the process past this many bytes of RSS.
    pub memory_limit: Option<u64>,
    /// Where traffic policies set over the admin API are kept; none: not kept.
    pub state_dir: Option<PathBuf>,
    /// How `warmup/*.json` files are read (the V2 codec's decoder).
    pub warmup_decoder: super::warmup::Decoder,
}

/// How soon a scan that saw a version still changing is repeated: a version
/// counts once two scans see the same files.
const SETTLE: Duration = Duration::from_millis(300);

/// Follows one source on behalf of the model table.
pub struct Watcher {
    source: Box<dyn Source>,
    /// The one handle that publishes the model table.
    table: Publisher,
    opts: Options,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each model's versions and fingerprints as the previous scan saw them.
    seen: HashMap<String, BTreeMap<u64, u64>>,
    /// When each (model, version, fingerprint) was first seen: detection time.
    first_seen: HashMap<(String, u64, u64), Instant>,
    /// What the table holds, as fingerprints of what it was loaded from.
    applied: HashMap<String, Applied>,
    /// Models unloaded by request: the watcher leaves them alone until a load.
    unloaded: HashSet<String>,
    /// Fingerprint of the traffic policy each model was last given (state file or
    /// config.toml), and of one that could not be applied (logged once).
    traffic_applied: HashMap<String, u64>,
    traffic_refused: HashMap<String, u64>,
}

#[derive(Default, Clone)]
struct Applied {
    config: u64,
    /// Version → fingerprint of the files it was loaded (or failed to load) from.
    versions: BTreeMap<u64, u64>,
}

/// What one load of a version took.
struct Loaded {
    version: ModelVersion,
    load: Duration,
    warmup: Duration,
}

impl Watcher {
    pub fn new(source: Box<dyn Source>, table: Publisher, opts: Options) -> Arc<Self> {
        Arc::new(Watcher {
            source,
            table,
            opts,
            state: Mutex::new(State::default()),
        })
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Brings every model in line with the source. The first scan takes every
    /// version as complete (the files were there before the server started);
    /// later ones only versions unchanged since the scan before. Returns whether
    /// some version is still changing.
    pub fn scan(&self, first: bool) -> Result<bool> {
        let listings = self.source.list()?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut settling = false;
        let names: HashSet<String> = listings.iter().map(|l| l.name.clone()).collect();
        for l in &listings {
            let stable = stable_versions(&mut st, l, first);
            // A model with a version still changing waits for it: acting on part
            // of the change could retire what serves before its successor counts.
            if stable.len() < l.versions.len() {
                settling = true;
                continue;
            }
            if !st.unloaded.contains(&l.name) {
                self.apply(&mut st, l, &stable);
                self.sync_traffic(&mut st, &l.name);
            }
        }
        // Models whose folder went away.
        let gone: Vec<String> = self
            .table
            .models()
            .snapshot()
            .models
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.table.replace_model(&name, None);
            st.applied.remove(&name);
            st.seen.remove(&name);
            st.unloaded.remove(&name);
            tracing::info!(model = %name, "removed: it is no longer in the {}", self.source.describe());
        }
        st.first_seen.retain(|(m, _, _), _| names.contains(m));
        Ok(settling)
    }

    /// Loads what the source has, marks the server ready, and in poll mode
    /// starts following the source on its own thread. Blocking: run it off the
    /// async runtime. A source that cannot be listed at start is an error
    /// except in poll mode, which retries every interval.
    pub fn start(self: Arc<Self>) -> Result<()> {
        let mode = self.opts.mode;
        if let Err(e) = self.scan(true) {
            tracing::error!(error = %e, source = %self.describe(), "cannot list models");
            if mode != ControlMode::Poll {
                return Err(e);
            }
        }
        let table = self.table.models().snapshot();
        let ready = table
            .models
            .values()
            .filter(|m| m.default_version().is_some())
            .count();
        tracing::info!(
            models = table.models.len(),
            ready,
            source = %self.describe(),
            model_control = ?mode,
            "repository loaded"
        );
        self.table.set_loaded();
        if mode == ControlMode::Poll {
            std::thread::Builder::new()
                .name("switchyard-watch".into())
                .spawn(move || self.run())
                .map_err(|e| {
                    Error::Internal(format!("cannot start the repository watcher: {e}"))
                })?;
        }
        Ok(())
    }

    /// Runs until the process ends: rescans on a change under the source's
    /// watched paths (after the writes settle) and every poll interval.
    pub fn run(self: Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let _watcher = self.watch(tx);
        let mut wait = self.opts.poll_interval;
        loop {
            match rx.recv_timeout(wait) {
                Ok(()) => {
                    // A burst of events is one change: let it finish, drop the rest.
                    std::thread::sleep(Duration::from_millis(50));
                    while rx.try_recv().is_ok() {}
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(wait);
                }
            }
            wait = match self.scan(false) {
                Ok(true) => SETTLE.min(self.opts.poll_interval),
                Ok(false) => self.opts.poll_interval,
                Err(e) => {
                    tracing::warn!(error = %e, source = %self.source.describe(), "cannot list models; what is loaded keeps serving");
                    self.opts.poll_interval
                }
            };
        }
    }

    /// Starts a file watcher on the source's paths, sending on every change;
    /// `None` (poll only) when there is nothing to watch or it cannot start.
    fn watch(&self, tx: std::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let paths = self.source.watch_paths();
        if paths.is_empty() {
            return None;
        }
        let handler = move |ev: notify::Result<notify::Event>| {
            if ev.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        };
        let mut w = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the repository for changes; polling only");
                return None;
            }
        };
        for p in paths {
            if let Err(e) = w.watch(&p, notify::RecursiveMode::Recursive) {
                tracing::warn!(path = %p.display(), error = %e, "cannot watch; polling only");
            }
        }
        Some(w)
    }

    /// Makes one model serve what its listing and version policy say.
    fn apply(&self, st: &mut State, l: &ModelListing, stable: &BTreeMap<u64, u64>) {
        let name: Arc<str> = Arc::from(l.name.as_str());
        let current = self.table.models().snapshot().models.get(&l.name).cloned();
        let applied = st.applied.get(&l.name).cloned().unwrap_or_default();
        let config = match &l.config {
            Ok(c) => c.clone(),
            Err(e) => {
                if applied.config != l.config_fingerprint || current.is_none() {
                    tracing::error!(model = %l.name, error = %e, "config.toml cannot be used; what is loaded keeps serving");
                    self.table
                        .models()
                        .load_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let model = match &current {
                        Some(m) => Model {
                            error: Some(e.clone()),
                            ..Model::clone(m)
                        },
                        None => Model::failed(name, ModelConfig::default(), e.clone()),
                    };
                    self.table.replace_model(&l.name, Some(model));
                    st.applied.entry(l.name.clone()).or_default().config = l.config_fingerprint;
                }
                return;
            }
        };
        let config_changed = applied.config != l.config_fingerprint || current.is_none();
        let policy = config
            .version_policy()
            .unwrap_or(crate::core::config::VersionPolicy::Latest(1));
        let available: Vec<u64> = stable.keys().copied().collect();
        let old_versions = current
            .as_ref()
            .map(|m| m.versions.clone())
            .unwrap_or_default();
        let serving: Vec<u64> = old_versions.keys().copied().collect();
        let plan = reconcile::plan(
            &policy,
            stable,
            &l.aliases,
            &serving,
            &applied.versions,
            config_changed,
        );
        let (desired, to_load) = (plan.desired.clone(), plan.load.clone());
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
                return;
            }
        }

        let mut attempts = BTreeMap::new();
        for &v in &to_load {
            let fp = stable[&v];
            let detected = st.first_seen.get(&(l.name.clone(), v, fp)).copied();
            let res = self.load(&name, v, &config);
            match &res {
                Ok(done) => tracing::info!(
                    model = %l.name,
                    version = v,
                    detect_ms = detected.map(|t| t.elapsed().saturating_sub(done.load + done.warmup).as_millis() as u64),
                    load_ms = done.load.as_millis() as u64,
                    warmup_ms = done.warmup.as_millis() as u64,
                    max_batch_size = done.version.metadata.max_batch_size,
                    "loaded"
                ),
                Err(e) => {
                    self.table
                        .models()
                        .load_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(model = %l.name, version = v, error = %e, "version failed to load; it does not replace what serves");
                }
            }
            attempts.insert(v, res);
        }

        let mut versions = BTreeMap::new();
        let mut failures = BTreeMap::new();
        for &v in &desired {
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
                        versions.insert(v, VersionState::Failed(e.to_string()));
                    }
                },
                None => {
                    if let Some(s) = old_versions.get(&v) {
                        versions.insert(v, s.clone());
                    }
                    if let Some(e) = current.as_ref().and_then(|m| m.failures.get(&v)) {
                        failures.insert(v, e.clone());
                    }
                }
            }
        }
        // A version that failed never replaces one that serves: while a desired
        // version is not ready, the old ones serve on as long as their files are there.
        let ready = |vs: &BTreeMap<u64, VersionState>, v: &u64| {
            matches!(vs.get(v), Some(VersionState::Ready(_)))
        };
        let desired_ok = desired.iter().all(|v| ready(&versions, v));
        let (kept, retired) = reconcile::retirements(
            &plan.retire,
            desired_ok,
            |v| ready(&old_versions, &v),
            |v| l.versions.contains_key(&v),
        );
        for v in kept {
            versions.insert(v, old_versions[&v].clone());
        }
        // `latest = N` with a failed version: the next ones down stand in, so
        // that a broken newest version does not leave the model without any.
        let mut tried = to_load.clone();
        if let crate::core::config::VersionPolicy::Latest(n) = policy {
            let serving = versions.keys().filter(|v| ready(&versions, v)).count();
            let mut need = n.min(available.len()).saturating_sub(serving);
            let candidates =
                reconcile::stand_ins(stable, &applied.versions, |v| versions.contains_key(&v));
            for v in candidates {
                if need == 0 {
                    break;
                }
                tried.push(v);
                match self.load(&name, v, &config) {
                    Ok(done) => {
                        tracing::info!(model = %l.name, version = v, "loaded in place of a newer version that failed");
                        versions.insert(v, VersionState::Ready(Arc::new(done.version)));
                        need -= 1;
                    }
                    Err(e) => {
                        self.table
                            .models()
                            .load_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(model = %l.name, version = v, error = %e, "version failed to load");
                        versions.insert(v, VersionState::Failed(e.to_string()));
                    }
                }
            }
        }
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
            name,
            config,
            versions,
            error,
            default: l.default,
            failures,
            traffic: current
                .as_ref()
                .map(|m| m.traffic.clone())
                .unwrap_or_default(),
            shadow_stats: current
                .as_ref()
                .map(|m| m.shadow_stats.clone())
                .unwrap_or_default(),
            aliases: l.aliases.clone(),
        };
        self.table.replace_model(&l.name, Some(model));
        for v in &retired {
            tracing::info!(model = %l.name, version = v, "retired: queued requests finish, then it is dropped");
        }

        let a = st.applied.entry(l.name.clone()).or_default();
        a.config = l.config_fingerprint;
        for v in &tried {
            a.versions.insert(*v, stable[v]);
        }
        for v in &retired {
            a.versions.remove(v);
        }
    }

    /// `<state-dir>/traffic/<model>.json`.
    fn traffic_file(&self, name: &str) -> Option<PathBuf> {
        self.opts
            .state_dir
            .as_ref()
            .map(|d| d.join("traffic").join(format!("{name}.json")))
    }

    /// Gives a model the traffic policy of its state file (written by this or
    /// another replica sharing the state directory), else of its config.toml,
    /// when that changed since it was last applied.
    fn sync_traffic(&self, st: &mut State, name: &str) {
        let Ok(model) = self.table.models().model(name) else {
            return;
        };
        let from_file = self
            .traffic_file(name)
            .and_then(|p| std::fs::read_to_string(p).ok());
        let (text, origin) = match &from_file {
            Some(t) => (t.clone(), "the state directory"),
            None => (
                serde_json::to_string(&model.config.traffic.clone().unwrap_or_default())
                    .unwrap_or_default(),
                "config.toml",
            ),
        };
        // Aliases resolve to versions: when one moves, the policy is applied again.
        let fp = fingerprint(&format!("{text}{:?}", model.aliases));
        if st.traffic_applied.get(name) == Some(&fp) {
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
                        ..Model::clone(&model)
                    }),
                );
                st.traffic_applied.insert(name.to_string(), fp);
                st.traffic_refused.remove(name);
                tracing::info!(model = name, policy = %spec, from = origin, "traffic policy applied");
            }
            Err(e) => {
                if st.traffic_refused.insert(name.to_string(), fp) != Some(fp) {
                    tracing::warn!(model = name, from = origin, error = %e, "traffic policy not applied (yet); retried every scan");
                }
            }
        }
    }

    /// Materialises, loads and warms up one version; refuses it first when the
    /// memory limit leaves no room.
    fn load(&self, name: &Arc<str>, v: u64, config: &ModelConfig) -> Result<Loaded> {
        let dir = self.source.materialize(name, v)?;
        self.check_memory(&dir)?;
        let t0 = Instant::now();
        let version = super::load_version(name, v, &dir, config)?;
        let load = t0.elapsed();
        let t1 = Instant::now();
        let mut version = version;
        super::warmup::warm_up(&version, &dir, self.opts.warmup_decoder)?;
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
        let Some(limit) = self.opts.memory_limit else {
            return Ok(());
        };
        let need = 2 * dir_size(dir);
        let rss = crate::core::sys::rss_bytes().unwrap_or(0);
        if rss + need > limit {
            return Err(Error::load(format!(
                "not loaded: it needs about {} (twice its files) and the server already uses {} of its --memory-limit {}",
                bytesize::ByteSize(need),
                bytesize::ByteSize(rss),
                bytesize::ByteSize(limit)
            )));
        }
        Ok(())
    }
}

impl ModelControl for Watcher {
    fn load(&self, name: &str) -> Result<()> {
        if self.opts.mode == ControlMode::None {
            return Err(Error::invalid(
                "models are not loaded on request: the server runs with --model-control none",
            ));
        }
        let listing = self.source.list_one(name)?.ok_or_else(|| {
            Error::not_found(format!(
                "the {} has no model '{name}'",
                self.source.describe()
            ))
        })?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.unloaded.remove(name);
        // An explicit load takes the files as they are now.
        let stable = stable_versions(&mut st, &listing, true);
        st.applied.remove(name);
        self.apply(&mut st, &listing, &stable);
        drop(st);
        match self.table.models().model(name)?.unavailable_reason() {
            None => Ok(()),
            Some(r) => Err(Error::load(format!("model '{name}' failed to load: {r}"))),
        }
    }

    fn set_traffic(&self, name: &str, spec: TrafficSpec, who: &str) -> Result<Arc<Traffic>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let model = self.table.models().model(name)?;
        let traffic = Arc::new(Traffic::new(spec, &model.ready_numbers(), &model.aliases)?);
        let text = serde_json::to_string_pretty(&traffic.spec).expect("plain data");
        if let Some(path) = self.traffic_file(name) {
            write_atomically(&path, text.as_bytes()).map_err(|e| {
                Error::Internal(format!(
                    "the policy was not changed: cannot keep it in {}: {e}",
                    path.display()
                ))
            })?;
        }
        // One table swap: a request sees the whole old policy or the whole new one.
        self.table.replace_model(
            name,
            Some(Model {
                traffic: traffic.clone(),
                ..Model::clone(&model)
            }),
        );
        st.traffic_applied
            .insert(name.to_string(), fingerprint(&text));
        st.traffic_refused.remove(name);
        tracing::info!(model = name, policy = %serde_json::to_string(&traffic.spec).unwrap_or_default(), by = who, "traffic policy changed");
        Ok(traffic)
    }

    fn unload(&self, name: &str) -> Result<()> {
        if self.opts.mode == ControlMode::None {
            return Err(Error::invalid(
                "models are not unloaded on request: the server runs with --model-control none",
            ));
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let old = self
            .table
            .models()
            .model(name)
            .map_err(|_| Error::not_found(format!("unknown model '{name}'")))?;
        let unloaded = Model::failed(
            old.name.clone(),
            old.config.clone(),
            "unloaded by request".into(),
        );
        self.table.replace_model(name, Some(unloaded));
        st.applied.remove(name);
        st.unloaded.insert(name.to_string());
        tracing::info!(
            model = name,
            "unloaded by request; queued requests finish first"
        );
        Ok(())
    }
}

/// The versions of `l` whose files are the same as at the previous scan (all of
/// them when `first` or when the source vouches for them), and records this scan.
fn stable_versions(st: &mut State, l: &ModelListing, first: bool) -> BTreeMap<u64, u64> {
    let now = Instant::now();
    for (&v, &fp) in &l.versions {
        st.first_seen.entry((l.name.clone(), v, fp)).or_insert(now);
    }
    let prev = st.seen.insert(l.name.clone(), l.versions.clone());
    l.versions
        .iter()
        .filter(|(v, fp)| first || l.complete || prev.as_ref().and_then(|p| p.get(v)) == Some(fp))
        .map(|(&v, &fp)| (v, fp))
        .collect()
}

fn fingerprint(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Writes a file whole or not at all: a temporary file beside it, synced, renamed.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
