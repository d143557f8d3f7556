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
}

/// A registered model's name as a Switchyard model name (a URL path segment).
fn served_name(registered: &str) -> Option<String> {
    super::valid_name(registered).then(|| registered.to_string())
}

impl MlflowSource {
    pub fn new(uri: &str, follow: Follow, cache: PathBuf) -> Result<Self> {
        let base = uri.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::load(format!(
                "--mlflow-uri {uri}: expected http://host:port or https://host"
            )));
        }
        std::fs::create_dir_all(&cache)
            .map_err(|e| Error::load(format!("--cache-dir {}: {e}", cache.display())))?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(MlflowSource {
            base,
            follow,
            cache,
            agent,
        })
    }

    /// GET a REST endpoint of the tracking server: the status and the JSON body.
    fn get_raw(&self, path: &str, query: &[(&str, &str)]) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut resp = req
            .call()
            .map_err(|e| Error::Unavailable(format!("MLflow at {}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
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

    /// Downloads the artifact folder `rel` (relative to the proxy's root) into `to`,
    /// checking every file's size against the listing.
    fn download_dir(&self, rel: &str, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to).map_err(|e| io_err(to, e))?;
        let list = self
            .get("/api/2.0/mlflow-artifacts/artifacts", &[("path", rel)])?
            .ok_or_else(|| Error::load(format!("MLflow has no artifacts at '{rel}'")))?;
        for f in list["files"].as_array().into_iter().flatten() {
            let Some(name) = f["path"].as_str() else {
                continue;
            };
            // A listed name is one path segment; anything else could escape `to`.
            let leaf = Path::new(name)
                .file_name()
                .filter(|n| *n == std::ffi::OsStr::new(name) && name != "..")
                .ok_or_else(|| {
                    Error::load(format!("MLflow listed an odd artifact name '{name}'"))
                })?;
            let child = format!("{rel}/{name}");
            if f["is_dir"].as_bool() == Some(true) {
                self.download_dir(&child, &to.join(leaf))?;
                continue;
            }
            let want = f["file_size"].as_u64();
            let path = to.join(leaf);
            let got = self.download_file(&child, &path)?;
            if want.is_some_and(|w| w != got) {
                return Err(Error::load(format!(
                    "artifact {child}: downloaded {got} bytes, MLflow lists {}",
                    want.unwrap_or(0)
                )));
            }
        }
        Ok(())
    }

    fn download_file(&self, rel: &str, to: &Path) -> Result<u64> {
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{rel}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| Error::Unavailable(format!("MLflow at {}: {e}", self.base)))?;
        if resp.status() != 200 {
            return Err(Error::load(format!(
                "artifact {rel}: MLflow answered {}",
                resp.status()
            )));
        }
        let mut file = std::fs::File::create(to).map_err(|e| io_err(to, e))?;
        let n = std::io::copy(&mut resp.body_mut().as_reader(), &mut file)
            .map_err(|e| Error::load(format!("artifact {rel}: {e}")))?;
        file.flush().map_err(|e| io_err(to, e))?;
        file.sync_all().map_err(|e| io_err(to, e))?;
        Ok(n)
    }
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
        let tmp = self
            .cache
            .join(model)
            .join(format!(".{version}.download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        // MLmodel first: a version that is not ONNX is refused before the rest of
        // its files are fetched.
        let res = std::fs::create_dir_all(&tmp)
            .map_err(|e| io_err(&tmp, e))
            .and_then(|()| self.download_file(&format!("{rel}/MLmodel"), &tmp.join("MLmodel")))
            .and_then(|_| onnx_data(&tmp.join("MLmodel")))
            .and_then(|data| {
                self.download_dir(&rel, &tmp)?;
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
                let (status, body) = answer(path, query);
                let mut out = stream;
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
                (200, b"graph".to_vec())
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
        assert_eq!(std::fs::read(got.join("model.onnx")).unwrap(), b"graph");

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

        let escape = move |path: &str, query: &str| match path {
            "/api/2.0/mlflow-artifacts/artifacts" => json(serde_json::json!({"files": [
                {"path": "../../evil", "is_dir": false}
            ]})),
            _ => onnx(path, query),
        };
        let s = source(&fake(escape), Follow::Tagged, &cache("escape"));
        let e = s.materialize("fraud", 2).unwrap_err();
        assert!(e.to_string().contains("odd artifact name"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
