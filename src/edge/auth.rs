//! Who may call what. Admin calls (repository load/unload, traffic, rollouts)
//! take a bearer token compared in constant time; with no token configured
//! they are served on the admin listener only (`--admin`, loopback by
//! default), never on the public ports, since a proxy, a port-forward or a
//! sidecar makes every caller look local. Predict calls, and with
//! `--protect-reads` the reads of metadata, statistics, drift and the
//! repository index, need `--api-token` when one is set; `/metrics` needs
//! `--metrics-token` when one is set; health probes are always open.

use subtle::ConstantTimeEq;

use crate::core::error::{Error, Result};

/// Which listener a call came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The HTTP and gRPC ports clients use.
    Public,
    /// The admin listener (`--admin`).
    Admin,
}

/// The credential policy of every endpoint.
#[derive(Clone, Default)]
pub struct AdminAuth {
    token: Option<String>,
    api_token: Option<String>,
    metrics_token: Option<String>,
    protect_reads: bool,
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, rest) = authorization?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// What a refused admin call on a public port is told.
const ADMIN_ELSEWHERE: &str =
    "admin calls are served on the public ports only with --admin-token; \
     without one, call the admin listener (--admin, default 127.0.0.1:8003)";

impl AdminAuth {
    pub fn new(token: Option<String>) -> Self {
        AdminAuth {
            token: token.filter(|t| !t.is_empty()),
            ..AdminAuth::default()
        }
    }

    /// Also requires `token` of the predict endpoints.
    pub fn with_api_token(mut self, token: Option<String>) -> Self {
        self.api_token = token.filter(|t| !t.is_empty());
        self
    }

    /// Also requires the API token of metadata, statistics, drift and the
    /// repository index.
    pub fn protect_reads(mut self, on: bool) -> Self {
        self.protect_reads = on;
        self
    }

    /// Requires `token` of `/metrics`.
    pub fn with_metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token.filter(|t| !t.is_empty());
        self
    }

    /// Checks a predict call's `Authorization` header when `--api-token` is set.
    pub fn check_api(&self, authorization: Option<&str>) -> Result<()> {
        let Some(token) = &self.api_token else {
            return Ok(());
        };
        expect_bearer(authorization, token, "predict calls", "API")
    }

    /// Checks a read of metadata, statistics, drift or the index: the API
    /// token with `--protect-reads`, else open.
    pub fn check_read(&self, authorization: Option<&str>) -> Result<()> {
        match (&self.api_token, self.protect_reads) {
            (Some(token), true) => expect_bearer(authorization, token, "reads", "API"),
            _ => Ok(()),
        }
    }

    /// Checks a scrape of `/metrics` when `--metrics-token` is set.
    pub fn check_metrics(&self, authorization: Option<&str>) -> Result<()> {
        let Some(token) = &self.metrics_token else {
            return Ok(());
        };
        expect_bearer(authorization, token, "/metrics", "metrics")
    }

    /// Whether admin calls need a token on every listener (`--admin-token`).
    pub fn admin_token_set(&self) -> bool {
        self.token.is_some()
    }

    /// Whether reads of metadata, statistics and drift need the API token
    /// (`--protect-reads` with `--api-token`).
    pub fn reads_protected(&self) -> bool {
        self.api_token.is_some() && self.protect_reads
    }

    /// Checks an admin call's `Authorization` header (`Bearer <token>`) on `port`.
    pub fn check(&self, authorization: Option<&str>, port: Port) -> Result<()> {
        match (&self.token, port) {
            (Some(token), _) => expect_bearer(authorization, token, "admin calls", "admin"),
            (None, Port::Admin) => Ok(()),
            (None, Port::Public) => Err(Error::Forbidden(ADMIN_ELSEWHERE.into())),
        }
    }
}

/// `Authorization: Bearer <token>` with this token, compared in constant time.
fn expect_bearer(authorization: Option<&str>, token: &str, calls: &str, kind: &str) -> Result<()> {
    let given = bearer(authorization).ok_or_else(|| {
        Error::Unauthenticated(format!("{calls} need 'Authorization: Bearer <token>'"))
    })?;
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Error::Unauthenticated(format!("wrong {kind} token")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_or_the_admin_listener() {
        let open = AdminAuth::new(None);
        assert!(open.check(None, Port::Admin).is_ok());
        assert!(matches!(
            open.check(None, Port::Public),
            Err(Error::Forbidden(_))
        ));
        let locked = AdminAuth::new(Some("s3cret".into()));
        for port in [Port::Public, Port::Admin] {
            assert!(locked.check(Some("Bearer s3cret"), port).is_ok());
            assert!(locked.check(Some("bearer  s3cret "), port).is_ok());
            assert!(matches!(
                locked.check(Some("Bearer nope"), port),
                Err(Error::Unauthenticated(_))
            ));
            assert!(matches!(
                locked.check(None, port),
                Err(Error::Unauthenticated(_))
            ));
            assert!(matches!(
                locked.check(Some("s3cret"), port),
                Err(Error::Unauthenticated(_))
            ));
        }
    }

    #[test]
    fn reads_are_open_unless_protected() {
        let a = AdminAuth::new(None).with_api_token(Some("k".into()));
        assert!(a.check_read(None).is_ok());
        let a = a.protect_reads(true);
        assert!(a.check_read(None).is_err());
        assert!(a.check_read(Some("Bearer k")).is_ok());
        let m = AdminAuth::new(None).with_metrics_token(Some("m".into()));
        assert!(m.check_metrics(None).is_err());
        assert!(m.check_metrics(Some("Bearer m")).is_ok());
        assert!(AdminAuth::new(None).check_metrics(None).is_ok());
    }
}
