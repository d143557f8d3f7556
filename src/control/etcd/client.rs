//! A small etcd v3 client on the project's own tonic stack: the KV calls, the
//! watch stream, leases and password authentication that the policy store
//! needs, over a connection to one member at a time. The API's
//! definitions compile with protox like the inference protocol's, so building
//! Switchyard still needs no `protoc` (the `etcd-client` crate's build does).

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::core::error::{Error, Result};

/// etcd's v3 API, the part of it in `proto/etcd.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;

/// How long one unary call may take: a member that lost its quorum answers
/// nothing, and the store must say it is down rather than wait.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the cluster is and how to talk to it: `etcd:URL[,URL...]/PREFIX`
/// and the options etcdctl takes (`--cacert`, `--cert`, `--key`, `--user`).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:2379` or `https://...`, one per member.
    pub endpoints: Vec<String>,
    /// Every key of this server's lives under it, ending in `/`.
    pub prefix: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `name:password`, for a cluster with authentication on.
    pub user: Option<String>,
}

impl std::fmt::Debug for EtcdConfig {
    // The password stays out of logs and `--help` defaults.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &(self.ca.is_some() || self.cert.is_some()))
            .field("user", &self.user.as_ref().map(|u| u.split(':').next()))
            .finish()
    }
}

impl EtcdConfig {
    /// `http://h1:2379,h2:2379/PREFIX` (the part after `etcd:`): a scheme on
    /// the first member applies to those after it that name none.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("'etcd:{s}' is not etcd:http://HOST:PORT[,HOST:PORT...]/PREFIX");
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("'{scheme}' is not http or https in 'etcd:{s}'"));
        }
        let other = if scheme == "http" {
            "https://"
        } else {
            "http://"
        };
        if rest.contains(other) {
            return Err(format!(
                "'etcd:{s}' mixes http and https: one scheme for every member"
            ));
        }
        let rest = rest.replace(&format!("{scheme}://"), "");
        let (hosts, prefix) = rest.split_once('/').ok_or_else(bad)?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Err(format!(
                "'etcd:{s}' names no key prefix: add one, e.g. /switchyard"
            ));
        }
        let mut endpoints = Vec::new();
        for h in hosts.split(',').map(str::trim) {
            if h.is_empty() {
                return Err(bad());
            }
            if h.contains('@') {
                return Err(format!(
                    "'{h}' carries a user: give it with --etcd-user (or SWITCHYARD_ETCD_USER), \
                     which stays out of logs and answers"
                ));
            }
            endpoints.push(format!("{scheme}://{h}"));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: format!("/{prefix}/"),
            ca: None,
            cert: None,
            key: None,
            user: None,
        })
    }

    /// Checks what can be checked before connecting: the TLS files read and
    /// parse, the user is NAME:PASSWORD. A mistake here is the operator's,
    /// not a store that is down: the server says so and does not start.
    pub fn check(&self) -> Result<()> {
        if self.endpoints.iter().any(|e| e.starts_with("https://")) && self.ca.is_none() {
            return Err(Error::invalid(
                "an https:// etcd needs --etcd-cacert (its CA certificate): no system roots are built in",
            ));
        }
        tls_config(self)?;
        if self.user.as_ref().is_some_and(|u| !u.contains(':')) {
            return Err(Error::invalid("--etcd-user is NAME:PASSWORD"));
        }
        Ok(())
    }

    /// The members, for the log and the answers.
    pub fn describe(&self) -> String {
        format!(
            "etcd at {} (prefix {})",
            self.endpoints.join(","),
            self.prefix
        )
    }
}

/// Handles on one balanced channel to the cluster; cheap to clone.
#[derive(Clone)]
pub struct Client {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
    lease: LeaseClient<Channel>,
    token: Option<AsciiMetadataValue>,
}

impl Client {
    /// Connects to the first member that answers, trying them in turn from
    /// the `start`-th, and authenticates when a user is set. Returns the
    /// client and the member's index. One member at a time, as etcd's own
    /// clients pin one: a balancer would keep routing calls to a member that
    /// is down.
    pub async fn connect(config: &EtcdConfig, start: usize) -> Result<(Client, usize)> {
        let tls = tls_config(config)?;
        let n = config.endpoints.len();
        let mut last = None;
        for i in (0..n).map(|k| (start + k) % n) {
            let url = &config.endpoints[i];
            let mut e = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::invalid(format!("'{url}' is not an etcd endpoint: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                // A dead member's connection is noticed within seconds, so
                // the watch moves to another member.
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            if let Some(tls) = &tls {
                e = e
                    .tls_config(tls.clone())
                    .map_err(|e| Error::invalid(format!("etcd TLS settings: {e}")))?;
            }
            match e.connect().await {
                Ok(channel) => return Ok((Self::on(channel, config).await?, i)),
                Err(e) => last = Some(format!("{url}: {e}")),
            }
        }
        Err(Error::Unavailable(format!(
            "no etcd member answers (last: {})",
            last.unwrap_or_default()
        )))
    }

    async fn on(channel: Channel, config: &EtcdConfig) -> Result<Client> {
        let mut client = Client {
            kv: KvClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            token: None,
        };
        if let Some(user) = &config.user {
            let (name, password) = user
                .split_once(':')
                .ok_or_else(|| Error::invalid("--etcd-user is NAME:PASSWORD"))?;
            let mut auth = AuthClient::new(channel);
            let answer = timed(auth.authenticate(pb::AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            }))
            .await?;
            client.token = Some(answer.token.parse().map_err(|_| {
                Error::Unavailable("etcd answered an authentication token that is not ASCII".into())
            })?);
        }
        Ok(client)
    }

    /// A request with the authentication token, and (for a watch) the mark that
    /// makes a member without a leader close the stream instead of going silent.
    fn request<T>(&self, message: T, require_leader: bool) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("token", t.clone());
        }
        if require_leader {
            r.metadata_mut()
                .insert("hasleader", AsciiMetadataValue::from_static("true"));
        }
        r
    }

    /// Every key under `prefix`, at one revision (the header's).
    pub async fn range_prefix(&self, prefix: &str) -> Result<pb::RangeResponse> {
        let req = pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        };
        timed(self.kv.clone().range(self.request(req, false))).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<pb::KeyValue>> {
        let req = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        Ok(timed(self.kv.clone().range(self.request(req, false)))
            .await?
            .kvs
            .pop())
    }

    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<pb::PutResponse> {
        let req = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        };
        timed(self.kv.clone().put(self.request(req, false))).await
    }

    /// Puts `value` at `key` only if the key's last change is `revision` (0:
    /// the key does not exist). `Err(current)` when it lost: what is there now.
    pub async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: i64,
        lease: i64,
    ) -> Result<std::result::Result<i64, Option<pb::KeyValue>>> {
        self.put_or_get(modified_at(key, revision), key, value, lease)
            .await
    }

    /// Puts `value` at `key` bound to `lease` only if no one holds the key:
    /// a lease-bound lock. `Err(holder)` when someone does.
    pub async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<std::result::Result<i64, Option<pb::KeyValue>>> {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        let absent = pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            range_end: vec![],
        };
        self.put_or_get(absent, key, value, lease).await
    }

    /// Puts `value` at `key` if `compare` holds (the revision written), else
    /// reads what `key` holds now.
    async fn put_or_get(
        &self,
        compare: pb::Compare,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<std::result::Result<i64, Option<pb::KeyValue>>> {
        let k = key.as_bytes().to_vec();
        let req = pb::TxnRequest {
            compare: vec![compare],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: k.clone(),
                    value,
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: k,
                    ..Default::default()
                })),
            }],
        };
        let answer = timed(self.kv.clone().txn(self.request(req, false))).await?;
        let revision = answer.header.map_or(0, |h| h.revision);
        if answer.succeeded {
            return Ok(Ok(revision));
        }
        let now = answer.responses.into_iter().find_map(|r| match r.response {
            Some(pb::response_op::Response::ResponseRange(mut r)) => r.kvs.pop(),
            _ => None,
        });
        Ok(Err(now))
    }

    /// Puts every `(key, value, lease)` at once if every comparison holds;
    /// the revision they were written at, or `None` when one did not hold.
    pub async fn txn(
        &self,
        compare: Vec<pb::Compare>,
        puts: Vec<(String, Vec<u8>, i64)>,
    ) -> Result<Option<i64>> {
        let req = pb::TxnRequest {
            compare,
            success: puts
                .into_iter()
                .map(|(key, value, lease)| pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: key.into_bytes(),
                        value,
                        lease,
                        ..Default::default()
                    })),
                })
                .collect(),
            failure: vec![],
        };
        let answer = timed(self.kv.clone().txn(self.request(req, false))).await?;
        Ok(answer
            .succeeded
            .then(|| answer.header.map_or(0, |h| h.revision)))
    }

    /// A lease of `ttl` seconds; its keys go when it is not kept alive.
    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        let req = pb::LeaseGrantRequest { ttl, id: 0 };
        let answer = timed(self.lease.clone().lease_grant(self.request(req, false))).await?;
        if !answer.error.is_empty() {
            return Err(Error::Unavailable(format!(
                "etcd refused a lease: {}",
                answer.error
            )));
        }
        Ok(answer.id)
    }

    pub async fn revoke(&self, id: i64) -> Result<()> {
        let req = pb::LeaseRevokeRequest { id };
        timed(self.lease.clone().lease_revoke(self.request(req, false)))
            .await
            .map(|_| ())
    }

    /// Opens a keep-alive stream: each message sent renews the lease, each
    /// answer says its TTL left (0: it is gone).
    pub async fn keep_alive(
        &self,
        requests: tokio::sync::mpsc::Receiver<pb::LeaseKeepAliveRequest>,
    ) -> Result<tonic::Streaming<pb::LeaseKeepAliveResponse>> {
        let stream = tokio_stream::wrappers::ReceiverStream::new(requests);
        timed(
            self.lease
                .clone()
                .lease_keep_alive(self.request(stream, false)),
        )
        .await
    }

    /// Opens a watch stream; the requests (create, progress) go through
    /// `requests`. A member that loses its leader closes it.
    pub async fn watch(
        &self,
        requests: tokio::sync::mpsc::Receiver<pb::WatchRequest>,
    ) -> Result<tonic::Streaming<pb::WatchResponse>> {
        let stream = tokio_stream::wrappers::ReceiverStream::new(requests);
        timed(self.watch.clone().watch(self.request(stream, true))).await
    }
}

/// `key`'s last change is at `revision` (0: it does not exist).
pub fn modified_at(key: &str, revision: i64) -> pb::Compare {
    use pb::compare::{CompareTarget, TargetUnion};
    equal(key, CompareTarget::Mod, TargetUnion::ModRevision(revision))
}

/// `key` is bound to `lease`: its holder is still who it was.
pub fn held_by(key: &str, lease: i64) -> pb::Compare {
    use pb::compare::{CompareTarget, TargetUnion};
    equal(key, CompareTarget::Lease, TargetUnion::Lease(lease))
}

/// A transaction's condition that `key`'s `target` equals `value`.
fn equal(
    key: &str,
    target: pb::compare::CompareTarget,
    value: pb::compare::TargetUnion,
) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(value),
        range_end: vec![],
    }
}

/// The key just past every key that starts with `prefix`: a range's end.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

fn tls_config(config: &EtcdConfig) -> Result<Option<ClientTlsConfig>> {
    let https = config.endpoints.iter().any(|e| e.starts_with("https://"));
    if !https && config.ca.is_none() && config.cert.is_none() {
        return Ok(None);
    }
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| Error::invalid(format!("cannot read {}: {e}", p.display())))
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &config.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (&config.cert, &config.key) {
        (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => {
            return Err(Error::invalid(
                "--etcd-cert and --etcd-key go together (a client certificate and its key)",
            ))
        }
    }
    Ok(Some(tls))
}

/// One call within [`CALL_TIMEOUT`], its status turned into the project's
/// error: `DeadlineExceeded` when no answer came (a write's outcome is then
/// unknown), `Unauthenticated` when etcd refused the token, `Unavailable`
/// otherwise. The store turns each into what its callers are answered.
async fn timed<T>(
    call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => {
            let said = format!("etcd answered {:?}: {}", s.code(), s.message());
            Err(match s.code() {
                tonic::Code::Unauthenticated => Error::Unauthenticated(said),
                _ => Error::Unavailable(said),
            })
        }
        Err(_) => Err(Error::DeadlineExceeded(format!(
            "etcd did not answer within {} s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_and_prefix() {
        let c = EtcdConfig::parse("http://a:2379,b:2379,http://c:2379/switchyard/prod").unwrap();
        assert_eq!(
            c.endpoints,
            ["http://a:2379", "http://b:2379", "http://c:2379"]
        );
        assert_eq!(c.prefix, "/switchyard/prod/");
        let c = EtcdConfig::parse("https://a:2379/sy/").unwrap();
        assert_eq!(c.endpoints, ["https://a:2379"]);
        assert_eq!(c.prefix, "/sy/");
        for bad in [
            "a:2379/sy",
            "http://a:2379",
            "http://a:2379/",
            "ftp://a/sy",
            "http://,/sy",
        ] {
            assert!(EtcdConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/sy/"), b"/sy0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
