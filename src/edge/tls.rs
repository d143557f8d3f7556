//! TLS on the listeners (rustls with the ring provider): the certificate
//! chain and key from PEM files, reloaded when they change on disk (cert-manager
//! and the kubelet rotate them in place) so that new handshakes get the new
//! certificate with no restart; a broken new file keeps the old one serving.
//! With a client CA, every client must present a certificate it signed (mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::core::tasks::Scope;

/// How often the certificate files are looked at for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A certificate or key that cannot serve, with the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// Where the PEM files are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// The certificate new handshakes get: swapped whole when the files change.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The listeners' TLS: an acceptor whose certificate follows its files.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    /// The bytes the current certificate was loaded from.
    loaded: Arc<(Vec<u8>, Vec<u8>)>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The chain and key in these PEM bytes, checked to belong together.
fn certified_key(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError(format!(
                "{} is not PEM certificates: {e}",
                files.cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "{} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        TlsError(format!(
            "{} is not a PEM private key: {e}",
            files.key.display()
        ))
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError(format!("{}: {e}", files.key.display())))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        TlsError(format!(
            "{} and {} do not belong together: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    Ok(ck)
}

/// The certificate and key files' bytes, read off the async threads.
async fn read_pair(files: &TlsFiles) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let (cert, key) = (files.cert.clone(), files.key.clone());
    tokio::task::spawn_blocking(move || (std::fs::read(cert).ok(), std::fs::read(key).ok()))
        .await
        .unwrap_or_default()
}

impl Tls {
    /// Loads the files; any problem is an error that names the file.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = (read(&files.cert, "certificate")?, read(&files.key, "key")?);
        let ck = certified_key(&files, &cert_pem, &key_pem, &provider)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(ck)));
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS: {e}")))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(ca, "client CA")?) {
                    let c = c.map_err(|e| {
                        TlsError(format!("{} is not PEM certificates: {e}", ca.display()))
                    })?;
                    roots
                        .add(c)
                        .map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(current.clone());
        // gRPC clients require h2 by ALPN; HTTP clients may take either.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            files,
            provider,
            loaded: Arc::new((cert_pem, key_pem)),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Follows the certificate and key files in `scope` until it is
    /// cancelled: a change that loads replaces the certificate for new
    /// handshakes; one that does not is logged and the old one keeps serving.
    pub fn follow(&self, scope: &Scope) {
        let (tls, token) = (self.clone(), scope.token().clone());
        scope.spawn(async move {
            // From the bytes loaded: a rotation since then is a change.
            let mut seen = (Some(tls.loaded.0.clone()), Some(tls.loaded.1.clone()));
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = token.cancelled() => return,
                }
                let now = read_pair(&tls.files).await;
                if now == seen {
                    continue;
                }
                // A rotation writes two files: a pair that does not match yet
                // is tried again on the next look.
                let (Some(cert), Some(key)) = (&now.0, &now.1) else {
                    tracing::warn!(cert = %tls.files.cert.display(), "certificate files unreadable; the old certificate keeps serving");
                    seen = now;
                    continue;
                };
                match certified_key(&tls.files, cert, key, &tls.provider) {
                    Ok(ck) => {
                        tls.current.0.store(Arc::new(ck));
                        tracing::info!(cert = %tls.files.cert.display(), "TLS certificate reloaded");
                        seen = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the new TLS certificate does not load; the old one keeps serving");
                        seen = now;
                    }
                }
            }
        });
    }
}
