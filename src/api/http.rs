//! The HTTP server (hyper 1.x): routes the KServe V2 paths, enforces the body limit,
//! and maps every error to a status with a JSON `{"error": ...}` body.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::{compression, v2};
use crate::error::{Error, Result};
use crate::model::Models;

/// Default request body limit (`--max-body-bytes`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// What the HTTP front end needs to know.
#[derive(Clone)]
pub struct HttpConfig {
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

struct State {
    models: Arc<Models>,
    config: HttpConfig,
}

type Body = Full<Bytes>;

/// Serves HTTP on `listener` until `shutdown` resolves, then lets open
/// connections finish their requests (up to 10 s) before returning.
pub async fn serve_http(
    listener: TcpListener,
    models: Arc<Models>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) {
    let state = Arc::new(State { models, config });
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&state, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
    }
}

async fn handle(state: &State, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match route(state, req).await {
        Ok(resp) => resp,
        Err(e) => {
            let status = e.http_status();
            if status.is_server_error() {
                tracing::warn!(%method, %path, %status, error = %e, "request failed");
            } else {
                tracing::debug!(%method, %path, %status, error = %e, "request refused");
            }
            error_response(&e)
        }
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// The one place an error becomes an HTTP answer.
pub fn error_response(e: &Error) -> Response<Body> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": e.to_string() }))
        .expect("serializing to memory cannot fail");
    let mut r = json(e.http_status(), body);
    match e {
        Error::MethodNotAllowed { allow, .. } => {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        Error::QueueFull { .. } => {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    r
}

/// Which handler a path names, with the model and version it addresses.
enum Route<'a> {
    ServerMetadata,
    Live,
    Ready,
    ModelMetadata(&'a str, Option<&'a str>),
    ModelReady(&'a str, Option<&'a str>),
    Infer(&'a str, Option<&'a str>),
}

impl Route<'_> {
    fn method(&self) -> Method {
        match self {
            Route::Infer(..) => Method::POST,
            _ => Method::GET,
        }
    }
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    Some(match segs.as_slice() {
        ["v2"] => Route::ServerMetadata,
        ["v2", "health", "live"] => Route::Live,
        ["v2", "health", "ready"] => Route::Ready,
        ["v2", "models", m] => Route::ModelMetadata(m, None),
        ["v2", "models", m, "ready"] => Route::ModelReady(m, None),
        ["v2", "models", m, "infer"] => Route::Infer(m, None),
        ["v2", "models", m, "versions", v] => Route::ModelMetadata(m, Some(v)),
        ["v2", "models", m, "versions", v, "ready"] => Route::ModelReady(m, Some(v)),
        ["v2", "models", m, "versions", v, "infer"] => Route::Infer(m, Some(v)),
        _ => return None,
    })
}

fn parse_version(model: &str, v: Option<&str>) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::not_found(format!(
                "model '{model}' has no version '{s}' (versions are positive integers)"
            ))),
        },
    }
}

async fn route(state: &State, req: Request<Incoming>) -> Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let route =
        parse_route(&path).ok_or_else(|| Error::not_found(format!("no such path: {path}")))?;
    let want = route.method();
    let ok = req.method() == want || (want == Method::GET && req.method() == Method::HEAD);
    if !ok {
        return Err(Error::MethodNotAllowed {
            method: req.method().to_string(),
            path,
            allow: if want == Method::POST {
                "POST"
            } else {
                "GET, HEAD"
            },
        });
    }
    let models = &state.models;
    match route {
        Route::ServerMetadata => Ok(json(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({
                "name": "switchyard",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": ["parameters"],
            }))
            .expect("plain data"),
        )),
        Route::Live => Ok(empty(StatusCode::OK)),
        Route::Ready => {
            if models.is_loaded() {
                Ok(empty(StatusCode::OK))
            } else {
                Err(Error::Unavailable("models are still loading".into()))
            }
        }
        Route::ModelMetadata(m, v) => {
            let version = parse_version(m, v)?;
            let model = models.model(m)?;
            Ok(json(
                StatusCode::OK,
                v2::encode_model_metadata(&model, version)?,
            ))
        }
        Route::ModelReady(m, v) => {
            let version = parse_version(m, v)?;
            models.resolve(m, version)?;
            Ok(empty(StatusCode::OK))
        }
        Route::Infer(m, v) => {
            let version = parse_version(m, v)?;
            // Resolved before the body is read: an unknown model is a 404 at once. If
            // the table changes meanwhile, the request finishes on this version.
            let mv = models.resolve(m, version)?;
            let json_len = header_usize(&req, INFERENCE_HEADER)?;
            let accept = compression::accepted(req.headers());
            let body = read_body(req, state.config.max_body_bytes).await?;
            let request = v2::decode_request(&body, json_len, m, version)?;
            let (request, format) = request;
            let response = mv.infer(request).await?;
            let (body, json_len) = v2::encode_response(&response, &format);
            let (body, encoding) = compression::compress(body, accept);
            let mut resp = match json_len {
                None => json(StatusCode::OK, body),
                Some(n) => {
                    let mut r = binary(body);
                    r.headers_mut()
                        .insert(INFERENCE_HEADER, HeaderValue::from(n));
                    r
                }
            };
            if let Some(e) = encoding {
                resp.headers_mut().insert(header::CONTENT_ENCODING, e);
            }
            Ok(resp)
        }
    }
}

/// Triton's binary tensor extension: the length of the JSON part of a body.
const INFERENCE_HEADER: &str = "inference-header-content-length";

fn header_usize(req: &Request<Incoming>, name: &str) -> Result<Option<usize>> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("header {name} is not a byte count: {v:?}"))),
    }
}

fn binary(body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// Reads the whole body within `limit` bytes, decompressing a gzip or deflate
/// `Content-Encoding` (the limit holds for the decompressed size too).
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes> {
    let encoding = compression::content_encoding(req.headers())?;
    let raw = read_raw_body(req, limit).await?;
    compression::decompress(raw, encoding, limit)
}

async fn read_raw_body(req: Request<Incoming>, limit: usize) -> Result<Bytes> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(Error::PayloadTooLarge { limit });
        }
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Error::PayloadTooLarge { limit })
        }
        Err(e) => Err(Error::invalid(format!(
            "could not read the request body: {e}"
        ))),
    }
}
