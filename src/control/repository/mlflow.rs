//! The MLflow Model Registry as a source, over MLflow's REST API: registered
//! models (named, or tagged `switchyard.serve=true`), their versions and aliases,
//! and version artifacts downloaded through the tracking server's artifact proxy
//! into a local cache. Only the configured tracking server is contacted, and only
//! the `onnx` flavour is served: nothing is unpickled.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::source::{ModelListing, Source};
use crate::core::config::ModelConfig;
use crate::core::error::{Error, Result};

/// The tag that marks a registered model for serving when no model is named.
pub const SERVE_TAG: &str = "switchyard.serve";

/// Which registered models to follow.
#[derive(Debug, Clone)]
pub enum Follow {
    /// These models; with an alias, the version it points to is the one served.
    Models(Vec<(String, Option<String>)>),
    /// Every registered model tagged `switchyard.serve=true`.
    Tagged,
}

impl Follow {
    /// `NAME` or `NAME@ALIAS` arguments; none: the tagged models.
    pub fn parse(args: &[String]) -> Follow {
        if args.is_empty() {
            return Follow::Tagged;
        }
        Follow::Models(
            args.iter()
                .map(|a| match a.split_once('@') {
                    Some((n, alias)) => (n.to_string(), Some(alias.to_string())),
                    None => (a.clone(), None),
                })
                .collect(),
        )
    }
}

pub struct MlflowSource {
    base: String,
    follow: Follow,
    cache: PathBuf,
    agent: ureq::Agent,
    /// Largest file of a version (`--max-model-bytes`).
    max_file_bytes: u64,
}

/// Default of `--max-model-bytes`: the largest file a version may have.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 8 << 30;
/// An `MLmodel` is a few hundred bytes of YAML.
const MAX_MLMODEL_BYTES: u64 = 1 << 20;
/// How deep an external data file may sit below the model.
const MAX_DEPTH: usize = 8;
/// Same-origin redirects followed, at most.
const MAX_REDIRECTS: usize = 5;

/// A registered model's name as a Switchyard model name (a URL path segment).
fn served_name(registered: &str) -> Option<String> {
    super::valid_name(registered).then(|| registered.to_string())
}

impl MlflowSource {
    pub fn new(uri: &str, follow: Follow, cache: PathBuf) -> Result<Self> {
        Self::with_limit(uri, follow, cache, DEFAULT_MAX_MODEL_BYTES)
    }

    /// As [`MlflowSource::new`], with files of a version capped at `max_file_bytes`.
    pub fn with_limit(
        uri: &str,
        follow: Follow,
        cache: PathBuf,
        max_file_bytes: u64,
    ) -> Result<Self> {
        let base = uri.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::load(format!(
                "--mlflow-uri {uri}: expected http://host:port or https://host"
            )));
        }
        private_dir(&cache)
            .map_err(|e| Error::load(format!("--cache-dir {}: {e}", cache.display())))?;
        remove_leftovers(&cache);
        // No whole-call timeout (a large model takes as long as it takes): a
        // connection, an answer's head, and each read of its body are bounded.
        // Redirects are followed here, on the tracking server's origin only.
        let agent = ureq::Agent::config_builder()
            .timeout_global(None)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(30)))
            .max_redirects(0)
            .max_response_header_size(64 << 10)
            .http_status_as_error(false)
            .build()
            .into();
        Ok(MlflowSource {
            base,
            follow,
            cache,
            agent,
            max_file_bytes,
        })
    }

    /// GET a REST endpoint of the tracking server: the status and the JSON body.
    fn get_raw(&self, path: &str, query: &[(&str, &str)]) -> Result<(u16, Value)> {
        let mut resp = self.call(&format!("{}{path}", self.base), query)?;
        let status = resp.status().as_u16();
        // A page of a search is well under this; read_to_string caps at 10 MB.
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| Error::Unavailable(format!("MLflow at {}: {e}", self.base)))?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// GET a REST endpoint; `Ok(None)` when MLflow says the thing does not exist.
    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Option<Value>> {
        let (status, body) = self.get_raw(path, query)?;
        if status == 404 || body["error_code"] == "RESOURCE_DOES_NOT_EXIST" {
            return Ok(None);
        }
        if status != 200 {
            return Err(Error::Unavailable(format!(
                "MLflow at {} answered {status} to {path}: {}",
                self.base,
                body["message"].as_str().unwrap_or(&body.to_string())
            )));
        }
        Ok(Some(body))
    }

    /// Every item of a paged MLflow search (`items` of each page), following
    /// `next_page_token`.
    fn search(&self, path: &str, filter: &str, items: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = vec![("filter", filter), ("max_results", "1000")];
            if !token.is_empty() {
                q.push(("page_token", token.as_str()));
            }
            let mut body = self.get(path, &q)?.unwrap_or_default();
            if let Some(page) = body.get_mut(items).and_then(Value::as_array_mut) {
                out.append(page);
            }
            match body["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_string(),
                _ => return Ok(out),
            }
        }
    }

    /// The names of the registered models tagged for serving.
    fn tagged(&self) -> Result<Vec<String>> {
        let filter = format!("tags.`{SERVE_TAG}` = 'true'");
        let models = self.search(
            "/api/2.0/mlflow/registered-models/search",
            &filter,
            "registered_models",
        )?;
        Ok(models
            .iter()
            .filter_map(|m| m["name"].as_str().map(String::from))
            .collect())
    }

    /// The READY versions of a registered model: version → artifact source.
    fn versions(&self, name: &str) -> Result<BTreeMap<u64, String>> {
        let filter = format!("name = '{}'", name.replace('\'', "\\'"));
        let versions = self.search(
            "/api/2.0/mlflow/model-versions/search",
            &filter,
            "model_versions",
        )?;
        Ok(versions
            .iter()
            .filter(|v| v["status"] == "READY")
            .filter_map(|v| {
                let n = v["version"].as_str()?.parse().ok()?;
                Some((n, v["source"].as_str().unwrap_or_default().to_string()))
            })
            .collect())
    }

    /// The version an alias points to; `None` when the alias does not exist.
    fn alias(&self, name: &str, alias: &str) -> Result<Option<u64>> {
        let path = "/api/2.0/mlflow/registered-models/alias";
        let (status, body) = self.get_raw(path, &[("name", name), ("alias", alias)])?;
        // MLflow answers a missing alias with 400 INVALID_PARAMETER_VALUE "... not found".
        let missing = status == 404
            || body["error_code"] == "RESOURCE_DOES_NOT_EXIST"
            || (status == 400
                && body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not found")));
        if missing {
            return Ok(None);
        }
        if status != 200 {
            return Err(Error::Unavailable(format!(
                "MLflow at {} answered {status} to {path}: {body}",
                self.base
            )));
        }
        Ok(body["model_version"]["version"]
            .as_str()
            .and_then(|v| v.parse().ok()))
    }

    fn listing(&self, registered: &str, alias: Option<&str>) -> Result<ModelListing> {
        let name = served_name(registered).ok_or_else(|| {
            Error::load(format!(
                "registered model '{registered}' cannot be served under that name: a model name holds only letters, digits, '_', '-' and '.'"
            ))
        })?;
        let mut listing = ModelListing {
            name,
            config: Ok(ModelConfig::default()),
            config_fingerprint: 1,
            versions: BTreeMap::new(),
            default: None,
            problem: None,
            complete: true,
            aliases: BTreeMap::new(),
        };
        let mut versions = self.versions(registered)?;
        let Some(reg) = self.registered(registered)? else {
            listing.problem = Some(format!("MLflow has no registered model '{registered}'"));
            return Ok(listing);
        };
        for a in reg["registered_model"]["aliases"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(v)) = (
                a["alias"].as_str(),
                a["version"].as_str().and_then(|v| v.parse().ok()),
            ) {
                if versions.contains_key(&v) {
                    listing.aliases.insert(name.to_string(), v);
                }
            }
        }
        if let Some(alias) = alias {
            match self.alias(registered, alias)? {
                Some(v) if versions.contains_key(&v) => {
                    versions.retain(|k, _| *k == v);
                    listing.aliases.retain(|_, a| *a == v);
                    listing.default = Some(v);
                }
                Some(v) => {
                    listing.problem = Some(format!(
                        "alias '{alias}' of '{registered}' points to version {v}, which is not READY"
                    ));
                    versions.clear();
                    listing.aliases.clear();
                }
                None => {
                    listing.problem = Some(format!(
                        "registered model '{registered}' has no alias '{alias}'"
                    ));
                    versions.clear();
                    listing.aliases.clear();
                }
            }
        }
        // MLflow versions are immutable: the artifact source identifies the files.
        listing.versions = versions
            .into_iter()
            .map(|(v, source)| {
                let mut h = std::hash::DefaultHasher::new();
                (registered, v, source).hash(&mut h);
                (v, h.finish())
            })
            .collect();
        Ok(listing)
    }

    fn registered(&self, name: &str) -> Result<Option<Value>> {
        self.get("/api/2.0/mlflow/registered-models/get", &[("name", name)])
    }

    fn followed(&self) -> Result<Vec<(String, Option<String>)>> {
        Ok(match &self.follow {
            Follow::Models(m) => m.clone(),
            Follow::Tagged => self.tagged()?.into_iter().map(|n| (n, None)).collect(),
        })
    }

    /// The registered model a served name comes from.
    fn registered_name(&self, model: &str) -> String {
        // Served names are the registered names (checked in `listing`).
        model.to_string()
    }

    /// GET `url`, following redirects that stay on the tracking server's
    /// origin (an artifact proxy may redirect within it) and refusing others:
    /// an answer of the registry never sends Switchyard to another host.
    fn call(&self, url: &str, query: &[(&str, &str)]) -> Result<ureq::http::Response<ureq::Body>> {
        let unavailable =
            |e: &dyn std::fmt::Display| Error::Unavailable(format!("MLflow at {}: {e}", self.base));
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.get(&url);
            for (k, v) in query {
                req = req.query(*k, *v);
            }
            let resp = req.call().map_err(|e| unavailable(&e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let to = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("");
            url = if to.starts_with('/') && !to.starts_with("//") {
                format!("{}{to}", origin(&self.base))
            } else if origin(to) == origin(&self.base) && !to.is_empty() {
                to.to_string()
            } else {
                return Err(Error::load(format!(
                    "MLflow at {} redirected to '{to}', off its origin: refused",
                    self.base
                )));
            };
        }
        Err(unavailable(&format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// The sizes MLflow lists for the files of the artifact folder `rel`.
    fn sizes(&self, rel: &str) -> Result<BTreeMap<String, u64>> {
        let list = self
            .get("/api/2.0/mlflow-artifacts/artifacts", &[("path", rel)])?
            .unwrap_or_default();
        Ok(list["files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["is_dir"].as_bool() != Some(true))
            .filter_map(|f| Some((f["path"].as_str()?.to_string(), f["file_size"].as_u64()?)))
            .collect())
    }

    /// Downloads the version's file `name` (a relative path checked not to
    /// leave the version) from the artifact folder `rel` into `to/name`,
    /// within `cap` bytes and the size MLflow lists for it.
    fn fetch(&self, rel: &str, name: &str, to: &Path, cap: u64) -> Result<u64> {
        if let Some(why) = crate::runtime::external_data::escapes(name, MAX_DEPTH)
            .or_else(|| name.contains('%').then_some("a percent-escaped path"))
        {
            return Err(Error::load(format!(
                "the version names the file '{name}', {why}: refused"
            )));
        }
        let (parent, leaf) = match name.rsplit_once('/') {
            Some((p, l)) => (format!("{rel}/{p}"), l),
            None => (rel.to_string(), name),
        };
        let want = self.sizes(&parent)?.get(leaf).copied();
        if want.is_some_and(|w| w > cap) {
            return Err(Error::load(format!(
                "artifact {name}: MLflow lists {} bytes, over the limit of {cap} (--max-model-bytes)",
                want.unwrap_or(0)
            )));
        }
        let path = to.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let got = self.download_file(&format!("{rel}/{name}"), &path, cap)?;
        if want.is_some_and(|w| w != got) {
            return Err(Error::load(format!(
                "artifact {name}: downloaded {got} bytes, MLflow lists {}",
                want.unwrap_or(0)
            )));
        }
        Ok(got)
    }

    fn download_file(&self, rel: &str, to: &Path, cap: u64) -> Result<u64> {
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{rel}", self.base);
        let mut resp = self.call(&url, &[])?;
        if resp.status() != 200 {
            return Err(Error::load(format!(
                "artifact {rel}: MLflow answered {}",
                resp.status()
            )));
        }
        let mut file = std::fs::File::create(to).map_err(|e| io_err(to, e))?;
        let reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let n = std::io::copy(
            &mut std::io::Read::take(reader, cap.saturating_add(1)),
            &mut file,
        )
        .map_err(|e| Error::load(format!("artifact {rel}: {e}")))?;
        if n > cap {
            return Err(Error::load(format!(
                "artifact {rel} is over the limit of {cap} bytes (--max-model-bytes)"
            )));
        }
        file.flush().map_err(|e| io_err(to, e))?;
        file.sync_all().map_err(|e| io_err(to, e))?;
        Ok(n)
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    let end = url[after..].find('/').map_or(url.len(), |i| after + i);
    &url[..end]
}

/// Creates `dir` (and its parents) readable by this user only: downloaded
/// models are code the runtime runs, so no one else may write them.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// How long a download folder may go unwritten before it counts as left by
/// a process that crashed (a live download writes at least every 30 s, the
/// per-read timeout, or fails).
const STALE_DOWNLOAD: Duration = Duration::from_secs(600);

/// Removes the hidden folders of downloads that a crashed process left
/// (`<model>/.<version>.download-*`): those unwritten for ten minutes. Not by
/// process id, which replicas in containers share (each is PID 1) over a
/// shared cache.
fn remove_leftovers(cache: &Path) {
    let Ok(models) = std::fs::read_dir(cache) else {
        return;
    };
    for m in models.flatten() {
        let Ok(entries) = std::fs::read_dir(m.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !(name.starts_with('.') && name.contains(".download-")) {
                continue;
            }
            if last_written(&e.path())
                .is_some_and(|t| t.elapsed().unwrap_or_default() > STALE_DOWNLOAD)
            {
                tracing::info!(leftover = %e.path().display(), "removing a download a stopped process left");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// When anything in `dir` (to the depth a version's files go) was last written.
fn last_written(dir: &Path) -> Option<std::time::SystemTime> {
    fn walk(p: &Path, depth: usize, latest: &mut Option<std::time::SystemTime>) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if let Ok(t) = meta.modified() {
            *latest = (*latest).max(Some(t));
        }
        if meta.is_dir() && depth > 0 {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), depth - 1, latest);
            }
        }
    }
    let mut latest = None;
    walk(dir, MAX_DEPTH + 1, &mut latest);
    latest
}

fn io_err(p: &Path, e: std::io::Error) -> Error {
    Error::load(format!("{}: {e}", p.display()))
}

/// The file of the `onnx` flavour named in an `MLmodel`; an error naming the
/// flavours there are when it has none.
fn onnx_data(mlmodel: &Path) -> Result<String> {
    let text = std::fs::read_to_string(mlmodel)
        .map_err(|e| Error::load(format!("the version has no readable MLmodel: {e}")))?;
    onnx_data_of(&text)
}

/// [`onnx_data`] of an `MLmodel`'s text.
pub fn onnx_data_of(text: &str) -> Result<String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text)
        .map_err(|e| Error::load(format!("MLmodel is not YAML: {e}")))?;
    let flavors = &docs
        .first()
        .ok_or_else(|| Error::load("MLmodel is empty"))?["flavors"];
    let onnx = &flavors["onnx"];
    if onnx.is_badvalue() {
        let have: Vec<String> = flavors
            .as_hash()
            .map(|h| {
                h.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        return Err(Error::load(format!(
            "the version has no onnx flavour (it has: {}); Switchyard serves ONNX models and never loads pickles",
            have.join(", ")
        )));
    }
    let data = onnx["data"].as_str().unwrap_or("model.onnx").to_string();
    if Path::new(&data).file_name() != Some(std::ffi::OsStr::new(&data)) {
        return Err(Error::load(format!(
            "the onnx flavour's data '{data}' is not a file of the version's folder"
        )));
    }
    Ok(data)
}

impl Source for MlflowSource {
    fn describe(&self) -> String {
        format!("MLflow registry at {}", self.base)
    }

    fn list(&self) -> Result<Vec<ModelListing>> {
        let mut out = Vec::new();
        for (name, alias) in self.followed()? {
            match self.listing(&name, alias.as_deref()) {
                Ok(l) => out.push(l),
                Err(Error::Unavailable(e)) => return Err(Error::Unavailable(e)),
                Err(e) => tracing::warn!(model = %name, error = %e, "skipped"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    fn list_one(&self, name: &str) -> Result<Option<ModelListing>> {
        let followed = self.followed()?;
        let Some((reg, alias)) = followed.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        self.listing(reg, alias.as_deref()).map(Some)
    }

    /// Downloads the version into `--cache-dir/<model>/<version>/` once: into a
    /// hidden folder first, renamed into place when every file is complete.
    fn materialize(&self, model: &str, version: u64) -> Result<PathBuf> {
        let dir = self.cache.join(model).join(version.to_string());
        let registered = self.registered_name(model);
        let uri = self
            .get(
                "/api/2.0/mlflow/model-versions/get-download-uri",
                &[("name", &registered), ("version", &version.to_string())],
            )?
            .and_then(|b| b["artifact_uri"].as_str().map(String::from))
            .ok_or_else(|| {
                Error::load(format!(
                    "MLflow has no version {version} of '{registered}' any more"
                ))
            })?;
        let rel = uri
            .strip_prefix("mlflow-artifacts:")
            .map(|r| r.trim_start_matches('/').to_string())
            .ok_or_else(|| {
                Error::load(format!(
                    "the artifacts of '{registered}' version {version} are at {uri}, which only the tracking server's proxy may reach here: run `mlflow server --serve-artifacts`"
                ))
            })?;
        // A cached copy counts only if it came from the same artifacts (a model
        // deleted and registered again reuses version numbers).
        let marker = dir.join(".switchyard-source");
        if std::fs::read_to_string(&marker).is_ok_and(|m| m == uri)
            && dir.join("model.onnx").is_file()
        {
            return Ok(dir);
        }
        let tmp = self.cache.join(model).join(format!(
            ".{version}.download-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        // MLmodel first: a version that is not ONNX is refused before the rest of
        // its files are fetched. Then only what it names: the graph, the
        // external data files the graph names, and a drift profile.
        let res = private_dir(&tmp)
            .map_err(|e| io_err(&tmp, e))
            .and_then(|()| self.fetch(&rel, "MLmodel", &tmp, MAX_MLMODEL_BYTES))
            .and_then(|_| onnx_data(&tmp.join("MLmodel")))
            .and_then(|data| {
                self.fetch(&rel, &data, &tmp, self.max_file_bytes)?;
                let graph = std::fs::read(tmp.join(&data)).map_err(|e| io_err(&tmp, e))?;
                let mut named: Vec<String> = crate::runtime::external_data::locations_in(&graph)
                    .map_err(|e| Error::load(format!("{data} is not an ONNX model: {e}")))?
                    .into_iter()
                    .map(|(_, l)| l.trim_start_matches("./").to_string())
                    .collect();
                named.sort();
                named.dedup();
                for name in named {
                    self.fetch(&rel, &name, &tmp, self.max_file_bytes)?;
                }
                let profile = crate::control::drift::profile::FILE;
                if self.sizes(&rel)?.contains_key(profile) {
                    self.fetch(&rel, profile, &tmp, self.max_file_bytes)?;
                }
                if data != "model.onnx" {
                    // External weights sit beside the graph and are found relative to it.
                    std::fs::rename(tmp.join(&data), tmp.join("model.onnx"))
                        .map_err(|e| io_err(&tmp, e))?;
                }
                Ok(())
            })
            .and_then(|()| {
                std::fs::write(tmp.join(".switchyard-source"), &uri).map_err(|e| io_err(&tmp, e))
            });
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
        tracing::info!(model, version, cache = %dir.display(), "downloaded from MLflow");
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    //! The source against a recorded fake of MLflow's REST API: a loopback
    //! server answering each path with what MLflow 3 answers (the end-to-end
    //! tests run the real `mlflow server`).

    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;

    type Answer = (u16, Vec<u8>);

    /// A 5-byte ONNX model: only its producer's name (field 2), "abc".
    const GRAPH: &[u8] = b"\x12\x03abc";

    /// Serves `answer(path, query)` on a loopback port until the test ends.
    fn fake(answer: impl Fn(&str, &str) -> Answer + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let (status, mut body) = answer(path, query);
                let mut out = stream;
                // A redirect's body is where it points.
                let location = if (300..400).contains(&status) {
                    format!(
                        "Location: {}\r\n",
                        String::from_utf8_lossy(&std::mem::take(&mut body))
                    )
                } else {
                    String::new()
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\n{location}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&body);
                let _ = out.read(&mut [0; 1]);
            }
        });
        format!("http://{addr}")
    }

    fn json(v: Value) -> Answer {
        (200, v.to_string().into_bytes())
    }

    /// A registry of one tagged model, `fraud`: versions 1 and 2 READY (2 is
    /// `champion`), 3 still PENDING; the tagged search comes in two pages.
    fn registry(path: &str, query: &str) -> Answer {
        match path {
            "/api/2.0/mlflow/registered-models/search" if query.contains("page_token=p2") => {
                json(serde_json::json!({"registered_models": [{"name": "bad name!"}]}))
            }
            "/api/2.0/mlflow/registered-models/search" => json(serde_json::json!({
                "registered_models": [{"name": "fraud"}], "next_page_token": "p2"
            })),
            "/api/2.0/mlflow/model-versions/search" => json(serde_json::json!({"model_versions": [
                {"version": "1", "status": "READY", "source": "mlflow-artifacts:/1/a/artifacts"},
                {"version": "2", "status": "READY", "source": "mlflow-artifacts:/1/b/artifacts"},
                {"version": "3", "status": "PENDING_REGISTRATION", "source": "x"}
            ]})),
            "/api/2.0/mlflow/registered-models/get" => json(serde_json::json!({
                "registered_model": {"name": "fraud", "aliases": [{"alias": "champion", "version": "2"}]}
            })),
            "/api/2.0/mlflow/registered-models/alias" if query.contains("alias=champion") => {
                json(serde_json::json!({"model_version": {"version": "2"}}))
            }
            "/api/2.0/mlflow/registered-models/alias" => (
                400,
                br#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Registered model alias nope not found."}"#.to_vec(),
            ),
            "/api/2.0/mlflow/model-versions/get-download-uri" => json(serde_json::json!({
                "artifact_uri": "mlflow-artifacts:/1/b/artifacts"
            })),
            "/api/2.0/mlflow-artifacts/artifacts" => json(serde_json::json!({"files": [
                {"path": "MLmodel", "is_dir": false, "file_size": 4},
                {"path": "model.onnx", "is_dir": false, "file_size": 5}
            ]})),
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/MLmodel" => {
                (200, b"x: 1".to_vec())
            }
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/model.onnx" => {
                (200, GRAPH.to_vec())
            }
            _ => (404, br#"{"error_code": "RESOURCE_DOES_NOT_EXIST"}"#.to_vec()),
        }
    }

    fn source(base: &str, follow: Follow, cache: &Path) -> MlflowSource {
        MlflowSource::new(base, follow, cache.to_path_buf()).unwrap()
    }

    fn cache(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("switchyard-mlflow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn tagged_models_across_pages_with_their_ready_versions_and_aliases() {
        let s = source(&fake(registry), Follow::Tagged, &cache("list"));
        let listings = s.list().unwrap();
        // "bad name!" (page two) cannot be a model name: skipped, not fatal.
        assert_eq!(listings.len(), 1);
        let l = &listings[0];
        assert_eq!(l.name, "fraud");
        assert_eq!(l.versions.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(l.aliases.get("champion"), Some(&2));
        assert!(l.complete && l.problem.is_none() && l.default.is_none());
    }

    #[test]
    fn an_alias_serves_its_version_only_and_a_missing_one_says_so() {
        let base = fake(registry);
        let follow = Follow::parse(&["fraud@champion".into(), "fraud@nope".into()]);
        let s = source(&base, follow, &cache("alias"));
        let champion = s.listing("fraud", Some("champion")).unwrap();
        assert_eq!(champion.versions.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(champion.default, Some(2));
        let nope = s.listing("fraud", Some("nope")).unwrap();
        assert!(nope.versions.is_empty());
        assert!(nope.problem.unwrap().contains("no alias 'nope'"));
    }

    #[test]
    fn a_failing_registry_is_unavailable_not_empty() {
        let base = fake(|_: &str, _: &str| (500, b"{\"message\": \"db down\"}".to_vec()));
        let s = source(&base, Follow::Tagged, &cache("down"));
        let e = s.list().unwrap_err();
        assert!(
            matches!(e, Error::Unavailable(_)) && e.to_string().contains("db down"),
            "{e}"
        );
    }

    #[test]
    fn materialize_downloads_checks_sizes_and_refuses_names_that_escape() {
        let dir = cache("download");
        let s = source(&fake(registry), Follow::Tagged, &dir);
        // The MLmodel has no onnx flavour: refused before the rest is fetched.
        let e = s.materialize("fraud", 2).unwrap_err();
        assert!(e.to_string().contains("no onnx flavour"), "{e}");
        assert!(
            !dir.join("fraud/2").exists(),
            "nothing half-downloaded is left"
        );

        let onnx = |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/MLmodel" => {
                (200, b"flavors:\n  onnx:\n    data: model.onnx\n".to_vec())
            }
            "/api/2.0/mlflow-artifacts/artifacts" => json(serde_json::json!({"files": [
                {"path": "MLmodel", "is_dir": false, "file_size": 38},
                {"path": "model.onnx", "is_dir": false, "file_size": 5}
            ]})),
            _ => registry(path, query),
        };
        let s = source(&fake(onnx), Follow::Tagged, &dir);
        let got = s.materialize("fraud", 2).unwrap();
        assert_eq!(std::fs::read(got.join("model.onnx")).unwrap(), GRAPH);

        let short = move |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts" => json(serde_json::json!({"files": [
                {"path": "model.onnx", "is_dir": false, "file_size": 6}
            ]})),
            _ => onnx(path, query),
        };
        let s = source(&fake(short), Follow::Tagged, &cache("short"));
        let e = s.materialize("fraud", 2).unwrap_err();
        assert!(
            e.to_string().contains("downloaded 5 bytes, MLflow lists 6"),
            "{e}"
        );

        // External data the graph names is fetched beside it, a drift
        // profile too; nothing else the version holds.
        let graph = crate::runtime::external_data::model_with(&["weights.bin", "./sub/w2.bin"]);
        let with_data = move |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/model.onnx" => (200, graph.clone()),
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/weights.bin" => (200, vec![1; 8]),
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/sub/w2.bin" => (200, vec![2; 4]),
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/baseline.json" => {
                (200, b"{}".to_vec())
            }
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/notes.txt" => {
                panic!("fetched a file the model does not name")
            }
            "/api/2.0/mlflow-artifacts/artifacts" => json(serde_json::json!({"files": [
                {"path": "baseline.json", "is_dir": false, "file_size": 2},
                {"path": "notes.txt", "is_dir": false, "file_size": 3}
            ]})),
            _ => onnx(path, query),
        };
        let s = source(&fake(with_data), Follow::Tagged, &cache("external-ok"));
        let got = s.materialize("fraud", 2).unwrap();
        assert_eq!(std::fs::read(got.join("weights.bin")).unwrap(), vec![1; 8]);
        assert_eq!(std::fs::read(got.join("sub/w2.bin")).unwrap(), vec![2; 4]);
        assert!(got.join("baseline.json").is_file());
        assert!(!got.join("notes.txt").exists());

        // A data file outside the version, by MLmodel or by the graph's
        // external data: refused.
        let escape = move |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/MLmodel" => {
                (200, b"flavors:\n  onnx:\n    data: ../../evil\n".to_vec())
            }
            _ => onnx(path, query),
        };
        let s = source(&fake(escape), Follow::Tagged, &cache("escape"));
        let e = s.materialize("fraud", 2).unwrap_err();
        assert!(e.to_string().contains("not a file of the version"), "{e}");
        for (location, why) in [
            ("../../evil", "climbs out"),
            ("/etc/passwd", "absolute"),
            ("%2e%2e/evil", "percent-escaped"),
            ("a/b/c/d/e/f/g/h/i", "too deep"),
        ] {
            let graph = crate::runtime::external_data::model_with(&[location]);
            let len = graph.len();
            let ext = move |path: &str, query: &str| match path {
                "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/model.onnx" => {
                    (200, graph.clone())
                }
                "/api/2.0/mlflow-artifacts/artifacts" => json(serde_json::json!({"files": [
                    {"path": "model.onnx", "is_dir": false, "file_size": len}
                ]})),
                _ => onnx(path, query),
            };
            let s = source(&fake(ext), Follow::Tagged, &cache("external"));
            let e = s.materialize("fraud", 2).unwrap_err();
            assert!(e.to_string().contains(why), "{location}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn downloads_are_capped_and_redirects_stay_on_the_origin() {
        let onnx = |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/MLmodel" => {
                (200, b"flavors:\n  onnx:\n    data: model.onnx\n".to_vec())
            }
            "/api/2.0/mlflow-artifacts/artifacts" => json(serde_json::json!({"files": [
                {"path": "model.onnx", "is_dir": false, "file_size": 5}
            ]})),
            _ => registry(path, query),
        };
        let dir = cache("capped");
        let s = MlflowSource::with_limit(&fake(onnx), Follow::Tagged, dir.clone(), 4).unwrap();
        let e = s.materialize("fraud", 2).unwrap_err();
        assert!(e.to_string().contains("over the limit of 4"), "{e}");
        // Unlisted, the cap holds while reading.
        let unlisted = move |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts" => json(serde_json::json!({"files": []})),
            _ => onnx(path, query),
        };
        let s = MlflowSource::with_limit(&fake(unlisted), Follow::Tagged, dir.clone(), 4).unwrap();
        let e = s.materialize("fraud", 2).unwrap_err();
        assert!(e.to_string().contains("over the limit of 4"), "{e}");

        let away = move |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/model.onnx" => {
                (302, b"http://elsewhere.example/model.onnx".to_vec())
            }
            _ => onnx(path, query),
        };
        let s = source(&fake(away), Follow::Tagged, &cache("away"));
        let e = s.materialize("fraud", 2).unwrap_err();
        assert!(e.to_string().contains("off its origin"), "{e}");
        let within = move |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts/1/b/artifacts/model.onnx" => {
                (302, b"/moved/model.onnx".to_vec())
            }
            "/moved/model.onnx" => (200, GRAPH.to_vec()),
            _ => onnx(path, query),
        };
        let s = source(&fake(within), Follow::Tagged, &cache("within"));
        let got = s.materialize("fraud", 2).unwrap();
        assert_eq!(std::fs::read(got.join("model.onnx")).unwrap(), GRAPH);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_crashed_download_is_removed_at_start_and_the_cache_is_private() {
        let dir = cache("leftover");
        let left = dir.join("fraud/.2.download-1-0a0b0c0d");
        let fresh = dir.join("fraud/.2.download-1-01020304");
        for d in [&left, &fresh] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("model.onnx"), b"x").unwrap();
        }
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        for p in [left.join("model.onnx"), left.clone()] {
            std::fs::File::open(&p).unwrap().set_modified(old).unwrap();
        }
        let _ = source(&fake(registry), Follow::Tagged, &dir);
        assert!(
            !left.exists(),
            "a download unwritten for an hour is removed"
        );
        assert!(
            fresh.exists(),
            "one being written (another replica's) is kept"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let fresh = cache("private");
            let _ = source(&fake(registry), Follow::Tagged, &fresh);
            let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
            let _ = std::fs::remove_dir_all(&fresh);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
