//! The console at `/console` on the admin listener: server-rendered pages of
//! each model's versions, traffic split, rollout, request windows and drift,
//! whose live parts a small script refreshes in place. Reading needs no
//! token; its forms call the admin API, which does. Its assets are in the
//! binary and it loads nothing from elsewhere.

mod chart;
mod page;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::control::Control;
use crate::core::error::{Error, Result};
use crate::edge::auth::Port;
use crate::serving::Models;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// Nothing but this origin, no inline script or style, never in a frame.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                      connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// What the console needs of the server.
pub(crate) struct Context<'a> {
    pub models: &'a std::sync::Arc<Models>,
    pub control: &'a Control,
    pub port: Port,
    /// Whether changes need the admin token (the page says so).
    pub token_needed: bool,
}

/// Answers `GET /console…`; `rest` is the path after `/console`.
pub(crate) async fn serve(cx: Context<'_>, rest: &str) -> Result<Response<Full<Bytes>>> {
    if cx.port != Port::Admin {
        return Err(Error::not_found(
            "the console is served on the admin listener (--admin, default 127.0.0.1:8003)",
        ));
    }
    let segs: Vec<&str> = rest.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        [""] => {
            let views = crate::edge::overview::read(cx.models, cx.control, None, false).await?;
            Ok(html(page::index(&views, cx.token_needed).into_string()))
        }
        ["live"] => {
            let views = crate::edge::overview::read(cx.models, cx.control, None, false).await?;
            Ok(html(page::index_live(&views).into_string()))
        }
        ["models", m] | ["models", m, "live"] => {
            let m = decode(m)?;
            let views = crate::edge::overview::read(cx.models, cx.control, Some(&m), true).await?;
            let view = views
                .first()
                .ok_or_else(|| Error::not_found(format!("no model named '{m}'")))?;
            Ok(html(if segs.len() == 3 {
                page::model_live(view).into_string()
            } else {
                page::model(view, cx.token_needed).into_string()
            }))
        }
        ["assets", "console.css"] => Ok(asset(CSS, "text/css; charset=utf-8")),
        ["assets", "console.js"] => Ok(asset(JS, "text/javascript; charset=utf-8")),
        _ => Err(Error::not_found(format!("no console page /console{rest}"))),
    }
}

/// A path segment's percent-escapes decoded (a model name may hold any
/// character a folder name does); malformed ones are a 400.
fn decode(seg: &str) -> Result<String> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = seg
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::invalid(format!("'{seg}' has a malformed %-escape")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid(format!("'{seg}' is not UTF-8")))
}

fn secured(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn html(body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secured(resp)
}

fn asset(text: &'static str, kind: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The binary's own copy: a new binary may bring another.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secured(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_and_bad_ones_are_refused() {
        assert_eq!(decode("my%20model").unwrap(), "my model");
        assert_eq!(decode("plain").unwrap(), "plain");
        assert!(decode("bad%2").is_err());
        assert!(decode("bad%zz").is_err());
        assert!(decode("%ff").is_err());
    }
}
