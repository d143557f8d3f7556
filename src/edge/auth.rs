//! Who may call what: the admin endpoints take a bearer token compared in constant
//! time, or, with no token configured, loopback peers only (as linkerd2-proxy
//! does); the predict endpoints are open unless `--api-token` sets one.

use std::net::SocketAddr;

use subtle::ConstantTimeEq;

use crate::core::error::{Error, Result};

/// The credential policy of the admin and predict endpoints.
#[derive(Clone, Default)]
pub struct AdminAuth {
    token: Option<String>,
    api_token: Option<String>,
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, rest) = authorization?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

impl AdminAuth {
    pub fn new(token: Option<String>) -> Self {
        AdminAuth {
            token: token.filter(|t| !t.is_empty()),
            api_token: None,
        }
    }

    /// Also requires `token` of the predict endpoints.
    pub fn with_api_token(mut self, token: Option<String>) -> Self {
        self.api_token = token.filter(|t| !t.is_empty());
        self
    }

    /// Checks a predict call's `Authorization` header when `--api-token` is set.
    pub fn check_api(&self, authorization: Option<&str>) -> Result<()> {
        let Some(token) = &self.api_token else {
            return Ok(());
        };
        expect_bearer(authorization, token, "predict calls", "API")
    }

    /// Checks an `Authorization` header value (`Bearer <token>`) from `peer`.
    pub fn check(&self, authorization: Option<&str>, peer: Option<SocketAddr>) -> Result<()> {
        let Some(token) = &self.token else {
            return match peer {
                Some(p) if p.ip().is_loopback() => Ok(()),
                _ => Err(Error::Forbidden(
                    "admin calls are accepted only from loopback when no --admin-token is set"
                        .into(),
                )),
            };
        };
        expect_bearer(authorization, token, "admin calls", "admin")
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
    fn token_or_loopback() {
        let lo: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let far: SocketAddr = "10.1.2.3:5".parse().unwrap();
        let open = AdminAuth::new(None);
        assert!(open.check(None, Some(lo)).is_ok());
        assert!(matches!(
            open.check(None, Some(far)),
            Err(Error::Forbidden(_))
        ));
        let locked = AdminAuth::new(Some("s3cret".into()));
        assert!(locked.check(Some("Bearer s3cret"), Some(far)).is_ok());
        assert!(locked.check(Some("bearer  s3cret "), Some(far)).is_ok());
        assert!(matches!(
            locked.check(Some("Bearer nope"), Some(lo)),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            locked.check(None, Some(lo)),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            locked.check(Some("s3cret"), Some(lo)),
            Err(Error::Unauthenticated(_))
        ));
    }
}
