//! Traffic policies shared by a fleet through etcd: every replica keeps a copy
//! of the keys under the prefix, follows them with one watch (resumed from the
//! last revision it saw after a break, re-read whole when that revision was
//! compacted), and registers itself under a lease so that the others see it.
//! Reads come from the copy and never wait on the network; a write is a
//! compare-and-swap on the revision the writer read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::client::{pb, Client, EtcdConfig};
use crate::core::error::{Error, Result};

/// A watch that answered no progress request for this long is taken for dead.
const WATCH_SILENCE: Duration = Duration::from_secs(4);
/// How often the watch is asked whether it is current, and this replica's
/// record refreshed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a replica's record is rewritten when nothing changed: each write
/// reaches every replica's watch, so a fleet of N costs N/REPORT writes a second.
const REPORT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One key under the prefix, as the watch last delivered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub value: String,
    /// The revision of its last change: what a compare-and-swap compares.
    pub revision: i64,
    #[serde(default)]
    pub lease: i64,
}

/// A replica as it reports itself under `replicas/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    /// The last change to a traffic policy that this replica has applied
    /// (the store's revision of it).
    pub policy_revision: i64,
    /// Unix seconds of its last report.
    pub reported_at: f64,
    pub started_at: f64,
    #[serde(default)]
    pub version: String,
}

/// What GET traffic, /admin/fleet and /metrics say about the store.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub kind: &'static str,
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub up: bool,
    /// The store's revision this replica has applied.
    pub revision: i64,
    /// Seconds since the copy was last known to be current (0 while the
    /// watch answers); grows while the store is unreachable.
    pub age_seconds: Option<f64>,
    pub replica: String,
    /// The last failure, while down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What this replica is called and how it holds its registration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub replica: String,
    /// Seconds a replica's lease (and a rollout leader's) outlives its
    /// last keep-alive.
    pub lease_ttl: i64,
    /// The last local copy of the policies, read when the server starts
    /// without etcd.
    pub copy: Option<PathBuf>,
}

type OnChange = Box<dyn Fn(Vec<String>) + Send + Sync>;

/// The policy store on etcd: its config, the copy, the connection.
pub struct EtcdStore {
    config: EtcdConfig,
    settings: Settings,
    state: Mutex<State>,
    /// Set once connected; writes go through it.
    client: Mutex<Option<Client>>,
    runtime: OnceLock<tokio::runtime::Handle>,
    on_change: Mutex<Option<OnChange>>,
    started_at: f64,
    /// The member the next connection tries first: after a failure, the
    /// one after the member that failed.
    member: std::sync::atomic::AtomicUsize,
    /// Snapshots of the local copy are numbered; the last one written wins
    /// even if an older one's write finishes after it.
    copies: std::sync::atomic::AtomicU64,
    copy_written: Arc<Mutex<u64>>,
}

#[derive(Default)]
struct State {
    /// Keys relative to the prefix.
    keys: BTreeMap<String, Stored>,
    revision: i64,
    up: bool,
    confirmed: Option<Instant>,
    error: Option<String>,
    /// This replica's lease, while it holds one.
    lease: i64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.config)
            .field("replica", &self.settings.replica)
            .finish()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EtcdStore {
    /// The store, with the last local copy (if any) loaded; nothing
    /// connects until [`EtcdStore::start`].
    pub fn new(config: EtcdConfig, settings: Settings) -> Self {
        let mut state = State::default();
        if let Some(copy) = settings.copy.as_ref().and_then(|p| std::fs::read(p).ok()) {
            match serde_json::from_slice::<BTreeMap<String, Stored>>(&copy) {
                Ok(keys) => {
                    tracing::info!(
                        policies = keys.len(),
                        "the last local copy of etcd's policies is loaded until etcd answers"
                    );
                    state.keys = keys;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the local copy of etcd's policies is unreadable; ignored")
                }
            }
        }
        EtcdStore {
            config,
            settings,
            state: Mutex::new(state),
            client: Mutex::new(None),
            runtime: OnceLock::new(),
            on_change: Mutex::new(None),
            started_at: unix_now(),
            member: Default::default(),
            copies: Default::default(),
            copy_written: Default::default(),
        }
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    pub fn replica(&self) -> &str {
        &self.settings.replica
    }

    /// Follows the store on the current runtime until `stop` is cancelled,
    /// then gives up this replica's lease.
    pub fn start(self: &Arc<Self>, scope: &crate::core::tasks::Scope) {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let (me, stop) = (self.clone(), scope.token().clone());
        scope.spawn(async move { me.follow(stop).await });
    }

    /// Calls `f` with the keys (relative to the prefix) that a watch event
    /// or a re-read changed.
    pub fn on_change(&self, f: impl Fn(Vec<String>) + Send + Sync + 'static) {
        *self.on_change.lock().unwrap() = Some(Box::new(f));
    }

    /// The value at `key` (relative to the prefix) in the copy.
    pub fn get(&self, key: &str) -> Option<Stored> {
        self.state.lock().unwrap().keys.get(key).cloned()
    }

    /// Every key under `dir/` in the copy, with the part after `dir/`.
    pub fn list(&self, dir: &str) -> Vec<(String, Stored)> {
        let dir = format!("{dir}/");
        self.state
            .lock()
            .unwrap()
            .keys
            .range(dir.clone()..)
            .take_while(|(k, _)| k.starts_with(&dir))
            .map(|(k, v)| (k[dir.len()..].to_string(), v.clone()))
            .collect()
    }

    pub fn health(&self) -> Health {
        let s = self.state.lock().unwrap();
        Health {
            kind: "etcd",
            endpoints: self.config.endpoints.clone(),
            prefix: self.config.prefix.clone(),
            up: s.up,
            revision: s.revision,
            age_seconds: s.confirmed.map(|c| c.elapsed().as_secs_f64()),
            replica: self.settings.replica.clone(),
            error: s.error.clone().filter(|_| !s.up),
        }
    }

    /// The last change to a traffic policy in the copy: what this replica
    /// reports as applied.
    pub fn policy_revision(&self) -> i64 {
        self.list("traffic")
            .iter()
            .map(|(_, v)| v.revision)
            .max()
            .unwrap_or(0)
    }

    /// The replicas that reported through the store (this one included).
    pub fn fleet(&self) -> Vec<Replica> {
        self.list("replicas")
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str(&v.value).ok())
            .collect()
    }

    /// Puts `value` at `key` if the key's last change is `expect` (default:
    /// the revision in the copy), from a thread outside the runtime (the
    /// control plane's). A lost race answers 409 with what is there now.
    pub fn put_if(&self, key: &str, value: &str, expect: Option<i64>) -> Result<i64> {
        let expect = expect.unwrap_or_else(|| self.get(key).map_or(0, |s| s.revision));
        let client = self.connected()?;
        let runtime = self.runtime.get().ok_or_else(|| self.down("not started"))?;
        let answer =
            runtime.block_on(client.put_if(&self.key(key), value.as_bytes().to_vec(), expect, 0));
        match answer {
            Ok(Ok(revision)) => {
                self.wrote(key, value, revision, 0);
                Ok(revision)
            }
            Ok(Err(current)) => {
                let (now, rev) = current.map_or(("nothing (it was deleted)".into(), 0), |kv| {
                    (
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.mod_revision,
                    )
                });
                Err(Error::Conflict(format!(
                    "{key} changed in etcd since revision {expect}: it is now {now} (revision {rev}); \
                     read it again and send the change with If-Match: {rev}"
                )))
            }
            Err(e) => Err(self.unconfirmed(e)),
        }
    }

    /// A write whose answer did not come: it may have been made or not.
    fn unconfirmed(&self, e: Error) -> Error {
        if matches!(e, Error::DeadlineExceeded(_)) {
            Error::Unavailable(format!(
                "the policy store ({}) did not confirm the change ({e}): it may have been \
                 made or not; GET it to see",
                self.config.describe()
            ))
        } else {
            self.down(&e.to_string())
        }
    }

    /// This replica's lease while it is connected (0: none): what its
    /// leadership and its published counters are bound to.
    pub fn lease(&self) -> i64 {
        let s = self.state.lock().unwrap();
        if s.up {
            s.lease
        } else {
            0
        }
    }

    /// Writes `puts` (keys relative to the prefix) in one transaction if
    /// every comparison (on full keys: see [`EtcdStore::key`]) holds, and
    /// takes them into the copy at once. `false` when one did not hold.
    pub async fn write_if(
        &self,
        compare: Vec<pb::Compare>,
        puts: Vec<(String, String, i64)>,
    ) -> Result<bool> {
        let client = self.connected()?;
        let full = puts
            .iter()
            .map(|(k, v, lease)| (self.key(k), v.clone().into_bytes(), *lease))
            .collect();
        let Some(revision) = client
            .txn(compare, full)
            .await
            .map_err(|e| self.unconfirmed(e))?
        else {
            return Ok(false);
        };
        self.apply(
            puts.into_iter()
                .map(|(k, value, lease)| {
                    (
                        k,
                        Ok(Stored {
                            value,
                            revision,
                            lease,
                        }),
                    )
                })
                .collect(),
            None,
        );
        Ok(true)
    }

    /// Puts `value` at `key` (relative) bound to `lease`, unless someone holds
    /// it: a lease-bound lock. Whether this replica holds it now.
    pub async fn acquire(&self, key: &str, value: &str, lease: i64) -> Result<bool> {
        let client = self.connected()?;
        match client
            .create(&self.key(key), value.as_bytes().to_vec(), lease)
            .await
            .map_err(|e| self.down(&e.to_string()))?
        {
            Ok(revision) => {
                self.wrote(key, value, revision, lease);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Puts `value` at `key` (relative), bound to `lease`.
    pub async fn put(&self, key: &str, value: &str, lease: i64) -> Result<()> {
        let client = self.connected()?;
        client
            .put(&self.key(key), value.as_bytes().to_vec(), lease)
            .await
            .map(|_| ())
            .map_err(|e| self.down(&e.to_string()))
    }

    /// The full key of `key` (relative to the prefix).
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    /// The client, while the store answers; a write is refused at once
    /// otherwise (the last known policy keeps serving).
    fn connected(&self) -> Result<Client> {
        let up = self.state.lock().unwrap().up;
        match self.client.lock().unwrap().clone() {
            Some(c) if up => Ok(c),
            _ => Err(self.down("not connected")),
        }
    }

    fn down(&self, why: &str) -> Error {
        Error::Unavailable(format!(
            "the policy store ({}) is unreachable ({why}): nothing was changed; the last \
             known policies keep serving",
            self.config.describe()
        ))
    }

    /// Takes a write of this replica's into the copy at once (its watch
    /// delivers it later, and is then skipped as not newer).
    fn wrote(&self, key: &str, value: &str, revision: i64, lease: i64) {
        let stored = Stored {
            value: value.to_string(),
            revision,
            lease,
        };
        self.apply(vec![(key.to_string(), Ok(stored))], None);
    }

    /// Takes changes into the copy (`Err(revision)`: deleted at that
    /// revision), skipping any older than what the copy holds (a write of this
    /// replica's is in the copy before its watch delivers it); `revision`,
    /// when the store said how far they go. Tells the plane which keys changed.
    fn apply(
        &self,
        changes: Vec<(String, std::result::Result<Stored, i64>)>,
        revision: Option<i64>,
    ) {
        let mut changed = Vec::new();
        {
            let mut s = self.state.lock().unwrap();
            for (key, value) in changes {
                let at = match &value {
                    Ok(v) => v.revision,
                    Err(r) => *r,
                };
                if s.keys.get(&key).is_some_and(|old| old.revision >= at) {
                    continue;
                }
                match value {
                    Ok(v) => {
                        s.keys.insert(key.clone(), v);
                    }
                    Err(_) => {
                        if s.keys.remove(&key).is_none() {
                            continue;
                        }
                    }
                }
                changed.push(key);
            }
            if let Some(r) = revision {
                s.revision = s.revision.max(r);
            }
        }
        self.notify(changed);
    }

    /// Keeps the local copy and tells the plane, when keys changed.
    fn notify(&self, changed: Vec<String>) {
        if changed.is_empty() {
            return;
        }
        if changed.iter().any(|k| k.starts_with("traffic/")) {
            self.keep_copy();
        }
        if let Some(f) = self.on_change.lock().unwrap().as_ref() {
            f(changed);
        }
    }

    /// Writes the policies to the local copy (whole, or not at all).
    fn keep_copy(&self) {
        let Some(path) = self.settings.copy.clone() else {
            return;
        };
        let policies: BTreeMap<String, Stored> = self
            .state
            .lock()
            .unwrap()
            .keys
            .iter()
            .filter(|(k, _)| k.starts_with("traffic/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let text = serde_json::to_vec_pretty(&policies).expect("plain data");
        let seq = self
            .copies
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let written = self.copy_written.clone();
        let write = move || {
            let mut last = written.lock().unwrap();
            if *last > seq {
                return;
            }
            *last = seq;
            if let Err(e) = crate::control::policy::write_atomically(&path, &text) {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the local copy of etcd's policies");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }

    fn set_up(&self, up: bool, error: Option<String>) {
        let mut s = self.state.lock().unwrap();
        if s.up != up {
            if up {
                tracing::info!(store = %self.config.describe(), revision = s.revision, "policy store up");
            } else {
                tracing::warn!(store = %self.config.describe(), error = error.as_deref().unwrap_or(""), "policy store down: the last known policies keep serving");
            }
        }
        s.up = up;
        if up {
            s.confirmed = Some(Instant::now());
            s.error = None;
        } else {
            s.error = error;
        }
    }

    fn publish_metrics(&self) {
        let h = self.health();
        metrics::gauge!("switchyard_policy_store_up").set(if h.up { 1.0 } else { 0.0 });
        metrics::gauge!("switchyard_policy_store_revision").set(h.revision as f64);
        if let Some(age) = h.age_seconds {
            metrics::gauge!("switchyard_policy_store_age_seconds").set(age);
        }
        metrics::gauge!("switchyard_fleet_replicas").set(self.fleet().len() as f64);
    }

    /// Connects, follows, and reconnects with backoff until stopped.
    async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let metrics = {
            let (me, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
                    me.publish_metrics();
                }
            })
        };
        loop {
            let began = Instant::now();
            let outcome = tokio::select! {
                r = self.session() => r,
                _ = stop.cancelled() => Ok(()),
            };
            if stop.is_cancelled() {
                break;
            }
            if let Err(e) = outcome {
                self.set_up(false, Some(e.to_string()));
                self.member
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            *self.client.lock().unwrap() = None;
            if began.elapsed() > Duration::from_secs(30) {
                backoff = BACKOFF_MIN;
            }
            // Jitter, so that a fleet that lost etcd together does not
            // reconnect in step.
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = stop.cancelled() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        metrics.abort();
        // Leave the fleet now rather than at the lease's expiry.
        let lease = std::mem::take(&mut self.state.lock().unwrap().lease);
        let client = self.client.lock().unwrap().take();
        if let (Some(c), true) = (client, lease != 0) {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.revoke(lease)).await;
        }
    }

    /// One connection: read (or resume), register, watch until it breaks.
    async fn session(&self) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let (client, member) = Client::connect(
            &self.config,
            self.member.load(Relaxed) % self.config.endpoints.len(),
        )
        .await?;
        self.member.store(member, Relaxed);
        if self.state.lock().unwrap().revision == 0 {
            self.reread(&client).await?;
        }
        // The last session's lease goes now rather than at its expiry: what
        // it held (this replica's record, a rollout's leadership) is taken
        // again under the new one without waiting out the TTL.
        let old = std::mem::take(&mut self.state.lock().unwrap().lease);
        if old != 0 {
            let _ = client.revoke(old).await;
        }
        let lease = client.grant(self.settings.lease_ttl).await?;
        self.state.lock().unwrap().lease = lease;
        let (ka_tx, ka_rx) = tokio::sync::mpsc::channel(4);
        ka_tx
            .send(pb::LeaseKeepAliveRequest { id: lease })
            .await
            .map_err(|_| self.down("keep-alive"))?;
        let mut keep_alive = client.keep_alive(ka_rx).await?;
        *self.client.lock().unwrap() = Some(client.clone());
        loop {
            match self.watch(&client, lease, &ka_tx, &mut keep_alive).await? {
                Broke::Compacted(at) => {
                    tracing::warn!(revision = at, "etcd compacted the revisions this replica had not seen: reading every key again");
                    self.reread(&client).await?;
                }
            }
        }
    }

    /// Reads every key under the prefix: the copy becomes exactly that.
    async fn reread(&self, client: &Client) -> Result<()> {
        let answer = client.range_prefix(&self.config.prefix).await?;
        let revision = answer.header.map_or(0, |h| h.revision);
        let fresh: BTreeMap<String, Stored> = answer
            .kvs
            .into_iter()
            .filter_map(|kv| self.relative(&kv).map(|k| (k, stored(&kv))))
            .collect();
        // The copy becomes what etcd holds, whatever it held before (a copy
        // read from disk, revisions from before a restore).
        let changed: Vec<String> = {
            let mut s = self.state.lock().unwrap();
            let mut changed: Vec<String> = s
                .keys
                .keys()
                .filter(|k| !fresh.contains_key(*k))
                .cloned()
                .collect();
            changed.extend(
                fresh
                    .iter()
                    .filter(|(k, v)| s.keys.get(*k) != Some(v))
                    .map(|(k, _)| k.clone()),
            );
            s.keys = fresh;
            s.revision = revision;
            changed
        };
        self.notify(changed);
        Ok(())
    }

    fn relative(&self, kv: &pb::KeyValue) -> Option<String> {
        let key = std::str::from_utf8(&kv.key).ok()?;
        key.strip_prefix(self.config.prefix.as_str())
            .map(str::to_string)
    }

    /// Watches the prefix from the revision after the last one seen, applies
    /// what it delivers, asks every heartbeat whether it is current, renews
    /// the lease and reports this replica. Returns when etcd compacted past
    /// where it resumed; fails when the stream breaks or goes silent.
    async fn watch(
        &self,
        client: &Client,
        lease: i64,
        ka_tx: &tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>,
        keep_alive: &mut tonic::Streaming<pb::LeaseKeepAliveResponse>,
    ) -> Result<Broke> {
        let from = self.state.lock().unwrap().revision + 1;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: self.config.prefix.as_bytes().to_vec(),
                    range_end: super::client::prefix_end(self.config.prefix.as_bytes()),
                    start_revision: from,
                    ..Default::default()
                },
            )),
        };
        tx.send(create).await.map_err(|_| self.down("watch"))?;
        let mut stream = client.watch(rx).await?;
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let mut lease_heard = Instant::now();
        let lease_ttl = Duration::from_secs(self.settings.lease_ttl.max(1) as u64);
        let mut last_renewal = Instant::now();
        let mut reported: Option<(i64, Instant)> = None;
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let msg = msg
                        .map_err(|s| self.down(&format!("the watch broke: {}", s.message())))?
                        .ok_or_else(|| self.down("the watch ended"))?;
                    heard = Instant::now();
                    if msg.compact_revision > 0 {
                        return Ok(Broke::Compacted(msg.compact_revision));
                    }
                    if msg.canceled {
                        return Err(self.down(&format!("the watch was cancelled: {}", msg.cancel_reason)));
                    }
                    // How far the copy is current: a batch goes up to its
                    // last event (its header may be ahead, while the watch
                    // catches up); a progress answer (no events, sent only
                    // once the watch has caught up) up to its header; the
                    // creation's header says nothing of what was delivered.
                    let revision = match msg.events.last() {
                        Some(e) => e.kv.as_ref().map(|kv| kv.mod_revision),
                        None if !msg.created => msg.header.as_ref().map(|h| h.revision),
                        None => None,
                    };
                    let changes = msg
                        .events
                        .iter()
                        .filter_map(|e| {
                            let kv = e.kv.as_ref()?;
                            let key = self.relative(kv)?;
                            let deleted = e.r#type == pb::event::EventType::Delete as i32;
                            Some((key, if deleted { Err(kv.mod_revision) } else { Ok(stored(kv)) }))
                        })
                        .collect();
                    self.apply(changes, revision);
                    self.set_up(true, None);
                }
                ka = keep_alive.message() => {
                    let ka = ka
                        .map_err(|s| self.down(&format!("the lease keep-alive broke: {}", s.message())))?
                        .ok_or_else(|| self.down("the lease keep-alive ended"))?;
                    if ka.ttl <= 0 {
                        return Err(self.down("this replica's lease expired"));
                    }
                    lease_heard = Instant::now();
                }
                _ = tick.tick() => {
                    if heard.elapsed() > WATCH_SILENCE {
                        return Err(self.down("the watch went silent"));
                    }
                    if lease_heard.elapsed() > lease_ttl {
                        return Err(self.down("the lease was not renewed within its TTL"));
                    }
                    let progress = pb::WatchRequest {
                        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                            pb::WatchProgressRequest {},
                        )),
                    };
                    let _ = tx.try_send(progress);
                    if last_renewal.elapsed() >= lease_ttl / 3 {
                        last_renewal = Instant::now();
                        let _ = ka_tx.try_send(pb::LeaseKeepAliveRequest { id: lease });
                    }
                    let applied = self.policy_revision();
                    if reported.is_none_or(|(r, at)| r != applied || at.elapsed() >= REPORT) {
                        reported = Some((applied, Instant::now()));
                        self.report(client, lease, applied).await?;
                    }
                }
            }
        }
    }

    /// Refreshes `replicas/<id>` under this replica's lease, within a
    /// second (the lease's renewal waits behind it). Fails, so that the
    /// session starts again and authenticates anew, when etcd no longer takes
    /// the token.
    async fn report(&self, client: &Client, lease: i64, policy_revision: i64) -> Result<()> {
        let record = Replica {
            id: self.settings.replica.clone(),
            policy_revision,
            reported_at: unix_now(),
            started_at: self.started_at,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let key = format!("{}replicas/{}", self.config.prefix, self.settings.replica);
        let value = serde_json::to_vec(&record).expect("plain data");
        match tokio::time::timeout(Duration::from_secs(1), client.put(&key, value, lease)).await {
            Ok(Err(e @ Error::Unauthenticated(_))) => {
                Err(self.down(&format!("etcd no longer takes this replica's token: {e}")))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot report this replica to etcd");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

enum Broke {
    Compacted(i64),
}

fn stored(kv: &pb::KeyValue) -> Stored {
    Stored {
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        revision: kv.mod_revision,
        lease: kv.lease,
    }
}
