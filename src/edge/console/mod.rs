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
    /// `--protect-reads`: the pages would show without a token what the API
    /// shows only with one, so they are off.
    pub reads_protected: bool,
}

/// Answers `GET /console…`; `rest` is the path after `/console`.
pub(crate) async fn serve(cx: Context<'_>, rest: &str) -> Result<Response<Full<Bytes>>> {
    if cx.port != Port::Admin {
        return Err(Error::not_found(
            "the console is served on the admin listener (--admin, default 127.0.0.1:8003)",
        ));
    }
    if cx.reads_protected {
        return Err(Error::Forbidden(
            "the console shows models without a token, and this server protects reads \
             (--protect-reads): use `switchyard models --api-token ...` instead"
                .into(),
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
            // Model names are letters, digits, `_`, `-` and `.` (the repository
            // refuses others): no escapes to decode.
            let views = crate::edge::overview::read(cx.models, cx.control, Some(m), true).await?;
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
