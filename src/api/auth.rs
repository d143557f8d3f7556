//! Who may call the admin endpoints: a bearer token compared in constant time, or,
//! with no token configured, loopback peers only (as linkerd2-proxy does).

use std::net::SocketAddr;

use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// The admin credential policy.
#[derive(Clone, Default)]
pub struct AdminAuth {
    token: Option<String>,
}

impl AdminAuth {
    pub fn new(token: Option<String>) -> Self {
        AdminAuth {
            token: token.filter(|t| !t.is_empty()),
        }
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
        let given = authorization
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| {
                Error::Unauthenticated("admin calls need 'Authorization: Bearer <token>'".into())
            })?;
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            Err(Error::Unauthenticated("wrong admin token".into()))
        }
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
