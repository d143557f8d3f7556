//! Where traffic policies set over the admin API are kept, and where replicas
//! read each other's: a state directory (`file:`), a Kubernetes ConfigMap
//! mounted as files (`configmap:`), which the operator changes and the server
//! only reads, or etcd (`etcd:`), which every replica watches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::etcd::{EtcdConfig, EtcdStore};
use crate::core::error::{Error, Result};

/// A policy store as `--policy-store` names it, before it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    File(PathBuf),
    ConfigMap(PathBuf),
    Etcd(EtcdConfig),
}

impl StoreSpec {
    /// `file:DIR`, `configmap:DIR` or `etcd:http://HOST:PORT[,...]/PREFIX`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("'{s}' is not file:DIR, configmap:DIR or etcd:http://HOST:PORT/PREFIX")
        })?;
        if rest.is_empty() {
            return Err(format!("'{s}' names no directory"));
        }
        match kind {
            "file" => Ok(StoreSpec::File(rest.into())),
            "configmap" => Ok(StoreSpec::ConfigMap(rest.into())),
            "etcd" => EtcdConfig::parse(rest).map(StoreSpec::Etcd),
            other => Err(format!(
                "'{other}' is not a policy store (file:DIR, configmap:DIR or etcd:URL/PREFIX)"
            )),
        }
    }
}

/// A policy store, open.
#[derive(Debug, Clone)]
pub enum PolicyStore {
    /// `DIR/traffic/<model>.json`, written atomically; replicas sharing DIR
    /// follow each other's changes.
    File(PathBuf),
    /// `DIR/<model>.json`, one ConfigMap key per model, which the kubelet
    /// swaps in atomically (the `..data` symlink); read-only here.
    ConfigMap(PathBuf),
    /// `PREFIX/traffic/<model>` in etcd, followed by a watch; written with a
    /// compare-and-swap.
    Etcd(Arc<EtcdStore>),
}

impl PolicyStore {
    /// Where the log says a policy came from.
    pub fn origin(&self) -> &'static str {
        match self {
            PolicyStore::File(_) => "the state directory",
            PolicyStore::ConfigMap(_) => "the ConfigMap",
            PolicyStore::Etcd(_) => "etcd",
        }
    }

    fn path(&self, model: &str) -> PathBuf {
        match self {
            PolicyStore::File(dir) => dir.join("traffic").join(format!("{model}.json")),
            PolicyStore::ConfigMap(dir) => dir.join(format!("{model}.json")),
            PolicyStore::Etcd(_) => PathBuf::new(),
        }
    }

    /// The stored policy of `model`, as text; `None` when it has none.
    pub fn read(&self, model: &str) -> Option<String> {
        match self {
            PolicyStore::Etcd(e) => e.get(&traffic_key(model)).map(|s| s.value),
            _ => std::fs::read_to_string(self.path(model)).ok(),
        }
    }

    /// The revision of `model`'s stored policy, where the store has one
    /// (etcd's: what `If-Match` names).
    pub fn revision(&self, model: &str) -> Option<i64> {
        match self {
            PolicyStore::Etcd(e) => Some(e.get(&traffic_key(model)).map_or(0, |s| s.revision)),
            _ => None,
        }
    }

    /// Keeps `model`'s policy; a ConfigMap is the operator's to change
    /// (409). In etcd, only if the policy is still at revision `expect`
    /// (default: the one this replica read): a lost race is a 409.
    pub fn write(&self, model: &str, text: &str, expect: Option<i64>) -> Result<()> {
        match self {
            PolicyStore::Etcd(e) => e.put_if(&traffic_key(model), text, expect).map(|_| ()),
            PolicyStore::File(_) => {
                let path = self.path(model);
                write_atomically(&path, text.as_bytes()).map_err(|e| {
                    Error::Internal(format!(
                        "the policy was not changed: cannot keep it in {}: {e}",
                        path.display()
                    ))
                })
            }
            PolicyStore::ConfigMap(dir) => Err(Error::Conflict(format!(
                "traffic policies are managed by the ConfigMap mounted at {}: change the \
                 ConfigMap's key {model}.json instead",
                dir.display()
            ))),
        }
    }

    /// A folder whose changes should be applied at once (the scan's poll is
    /// the fallback): the ConfigMap's, which the kubelet swaps.
    pub fn watch_path(&self) -> Option<PathBuf> {
        match self {
            PolicyStore::File(_) | PolicyStore::Etcd(_) => None,
            PolicyStore::ConfigMap(dir) => Some(dir.clone()),
        }
    }
}

/// The key of `model`'s policy in etcd, under the prefix.
pub(crate) fn traffic_key(model: &str) -> String {
    format!("traffic/{model}")
}

/// Writes a file whole or not at all: a temporary file beside it, synced, renamed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_refuses_others() {
        assert_eq!(
            StoreSpec::parse("file:/var/lib/s"),
            Ok(StoreSpec::File("/var/lib/s".into()))
        );
        assert_eq!(
            StoreSpec::parse("configmap:/etc/policies"),
            Ok(StoreSpec::ConfigMap("/etc/policies".into()))
        );
        assert!(matches!(
            StoreSpec::parse("etcd:http://127.0.0.1:2379/sy"),
            Ok(StoreSpec::Etcd(_))
        ));
        assert!(StoreSpec::parse("/etc/x").is_err());
        assert!(StoreSpec::parse("file:").is_err());
        assert!(StoreSpec::parse("etcd:http://127.0.0.1:2379").is_err());
        assert!(StoreSpec::parse("s3:bucket").is_err());
    }

    #[test]
    fn a_configmap_is_read_not_written() {
        let dir = std::env::temp_dir().join(format!("sy-cm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mlp.json"), r#"{"weights": {"1": 100}}"#).unwrap();
        let store = PolicyStore::ConfigMap(dir.clone());
        assert!(store.read("mlp").unwrap().contains("weights"));
        assert_eq!(store.read("other"), None);
        let e = store.write("mlp", "{}", None).unwrap_err();
        assert_eq!(e.status_code(), 409);
        assert!(e.to_string().contains("managed by the ConfigMap"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
