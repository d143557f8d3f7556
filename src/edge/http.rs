//! The HTTP server (hyper 1.x): routes the KServe V2 paths, enforces the body limit,
//! and maps every error to a status with a JSON `{"error": ...}` body.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::auth::{AdminAuth, Port};
use super::limits::{Bounds, Hold, Metered, CONTROL_BODY_BYTES};
use super::pipeline::Call;
use super::status::ErrorStatus;
use super::trace::ServerSpan;
use super::{compression, v2};
use crate::control::Control;
use crate::core::error::{Error, Result};
use crate::core::tasks::Scope;
use crate::serving::{parse_version, Models};

/// Default request body limit (`--max-body-bytes`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// What the HTTP front end needs to know.
#[derive(Clone)]
pub struct HttpConfig {
    /// The model `POST /invocations` scores (MLflow's single-model endpoint).
    pub default_model: Option<String>,
    /// Which listener this is: admin calls need a token on the public one.
    pub port: Port,
    /// TLS on this listener.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The routes a cloud platform's contract adds (SageMaker, Vertex AI).
    pub platform: super::platform::Platform,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            default_model: None,
            port: Port::Public,
            tls: None,
            platform: Default::default(),
        }
    }
}

struct State {
    models: Arc<Models>,
    /// Holds the credential policy of predict and admin calls alike.
    pipeline: super::pipeline::Pipeline,
    config: HttpConfig,
    control: Control,
    bounds: Bounds,
}

type Body = Full<Bytes>;
/// What every HTTP handler answers.
pub type HttpResponse = Response<Body>;

/// Serves HTTP on `listener` until `scope` is cancelled, then lets open
/// connections finish their requests (up to 10 s) before returning.
pub async fn serve_http(
    listener: TcpListener,
    models: Arc<Models>,
    control: Control,
    config: HttpConfig,
    admin: AdminAuth,
    bounds: Bounds,
    scope: Scope,
) {
    let tls = config.tls.clone();
    let state = Arc::new(State {
        pipeline: super::pipeline::Pipeline::new(models.clone(), admin),
        models,
        config,
        control,
        bounds: bounds.clone(),
    });
    super::server::serve(
        listener,
        move |peer| {
            let state = state.clone();
            service_fn(move |req| {
                let state = state.clone();
                let received = crate::core::request::Received::enter();
                async move {
                    let answer = handle(&state, req, peer).await;
                    drop(received);
                    Ok::<_, std::convert::Infallible>(answer)
                }
            })
        },
        &bounds,
        tls,
        scope,
    )
    .await;
}

/// Serves `GET /metrics` alone on `listener` (`--metrics ADDR`: Triton's
/// metrics port, which a scrape config or a network policy can single out).
pub async fn serve_metrics(
    listener: TcpListener,
    models: Arc<Models>,
    control: Control,
    auth: AdminAuth,
    bounds: Bounds,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scope: Scope,
) {
    super::server::serve(
        listener,
        move |_| {
            let (models, control, auth) = (models.clone(), control.clone(), auth.clone());
            service_fn(move |req: Request<Incoming>| {
                let (models, control, auth) = (models.clone(), control.clone(), auth.clone());
                async move {
                    let answer = match (req.method(), req.uri().path()) {
                        (&http::Method::GET, "/metrics") => {
                            match auth.check_metrics(authorization(&req)) {
                                Ok(()) => metrics_text(models, &control).await,
                                Err(e) => Err(e),
                            }
                        }
                        (m, "/metrics") => Err(Error::MethodNotAllowed {
                            method: m.to_string(),
                            path: "/metrics".into(),
                            allow: "GET",
                        }),
                        (_, path) => Err(Error::not_found(format!(
                            "no route for {path}: this port serves GET /metrics only"
                        ))),
                    };
                    let resp = answer.unwrap_or_else(|e| error_response(&e));
                    Ok::<_, std::convert::Infallible>(resp)
                }
            })
        },
        &bounds,
        tls,
        scope,
    )
    .await;
}

/// The Prometheus text exposition of every metric: the rollouts as the
/// control plane answers, the rest rendered off the async threads (it reads
/// the drift windows, which their binning threads lock).
async fn metrics_text(models: Arc<Models>, control: &Control) -> Result<Response<Body>> {
    let rollouts = control.rollouts().await?;
    let text = super::off_runtime("metrics", move || {
        crate::edge::metrics::render(&models, &rollouts)
            .ok_or_else(|| Error::not_found("metrics are off (--no-metrics)"))
    })
    .await?;
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

async fn handle(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // Kept for the log line of a failure; cloning a Uri shares its buffer.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path();
    // What the request's body takes of the in-flight budget, given back once
    // it is answered.
    let hold = Hold::new(&state.bounds.budget);
    let http1 = req.version() == http::Version::HTTP_11;
    let mut resp = match route(state, req, peer, &hold).await {
        Ok(resp) => resp,
        Err(e) => failed(&method, path, &e),
    };
    // Once a stop began, a keep-alive client is told to reconnect for its next
    // request, which a load balancer sends elsewhere, rather than reuse a
    // connection that the stop will close under it.
    if http1 && state.bounds.stopping.is_stopping() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A failed request's answer, logged: a warning when the server failed.
fn failed(method: &http::Method, path: &str, e: &Error) -> Response<Body> {
    let status = e.http_status();
    if status.is_server_error() {
        tracing::warn!(%method, %path, %status, error = %e, "request failed");
    } else {
        tracing::debug!(%method, %path, %status, error = %e, "request refused");
    }
    error_response(e)
}

/// A readiness probe's 503 while models load: an answer, not a failure to log
/// (probes ask every second or so, and a slow start would fill the log).
fn not_ready() -> Response<Body> {
    error_response(&Error::Unavailable("models are still loading".into()))
}

/// Readiness once a stop began: load balancers take the pod out while it
/// still serves what they send.
fn stopping() -> Response<Body> {
    error_response(&Error::Unavailable("the server is shutting down".into()))
}

pub(super) fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A 200 with a JSON body.
pub(super) fn json_ok(body: Vec<u8>) -> Response<Body> {
    json(StatusCode::OK, body)
}

fn small_json(v: serde_json::Value) -> Response<Body> {
    json(StatusCode::OK, serde_json::to_vec(&v).expect("plain data"))
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
        Error::QueueFull { .. } | Error::Overloaded(_) => {
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
    ModelMetadata(&'a str, &'a str),
    ModelReady(&'a str, &'a str),
    ModelConfig(&'a str, &'a str),
    /// Statistics of every model (empty name), one model, or one version.
    ModelStats(&'a str, &'a str),
    Infer(&'a str, &'a str),
    RepositoryIndex,
    RepositoryLoad(&'a str),
    RepositoryUnload(&'a str),
    V1List,
    V1Model(&'a str),
    V1Predict(&'a str),
    /// MLflow scoring; `None` is the default model (`POST /invocations`).
    Invocations(Option<&'a str>),
    /// MLflow's `/ping` and `/health`.
    Ping,
    /// `GET|PUT /admin/models/{m}/traffic`.
    Traffic(&'a str),
    /// `GET|POST|DELETE /admin/models/{m}/rollout`.
    Rollout(&'a str),
    /// `GET /admin/fleet`: the policy store and the replicas it has seen.
    Fleet,
    /// `GET /admin/models[/{m}]`: what an operator sees of each model (or one).
    AdminModels(&'a str),
    /// `GET /console…` on the admin listener: the path after `/console`.
    Console(&'a str),
    /// Prometheus's scrape.
    Metrics,
    /// OpenAI's `POST /v1/embeddings`.
    OpenAiEmbeddings,
    /// TEI's `POST /embed`.
    TeiEmbed,
    /// `GET /v2/models/{m}[/versions/{v}]/drift`.
    Drift(&'a str, &'a str),
    /// SageMaker's multi-model API: `GET|POST /models`.
    MultiModelList,
    /// `GET|DELETE /models/{m}`.
    MultiModel(&'a str),
    /// Vertex AI's `AIP_PREDICT_ROUTE`: the V1 predict of the default model.
    VertexPredict,
}

impl Route<'_> {
    /// An inference route's template, as a span's `http.route` names it;
    /// `None` for one configured (Vertex AI's), whose path is its own.
    fn template(&self) -> Option<&'static str> {
        Some(match self {
            Route::Infer(_, "") => "/v2/models/{model}/infer",
            Route::Infer(..) => "/v2/models/{model}/versions/{version}/infer",
            Route::V1Predict(_) => "/v1/models/{model}:predict",
            Route::Invocations(None) => "/invocations",
            Route::Invocations(Some(_)) => "/models/{model}/invocations",
            Route::OpenAiEmbeddings => "/v1/embeddings",
            Route::TeiEmbed => "/embed",
            _ => return None,
        })
    }

    /// The methods a route takes, as the `Allow` header lists them.
    fn allow(&self) -> &'static str {
        match self {
            Route::Infer(..)
            | Route::RepositoryLoad(_)
            | Route::RepositoryUnload(_)
            | Route::V1Predict(_)
            | Route::Invocations(_)
            | Route::OpenAiEmbeddings
            | Route::TeiEmbed
            | Route::VertexPredict => "POST",
            // Triton's clients POST the index; a browser or curl GETs it.
            Route::RepositoryIndex => "GET, HEAD, POST",
            Route::Traffic(_) => "GET, HEAD, PUT",
            Route::Rollout(_) => "GET, HEAD, POST, DELETE",
            Route::MultiModelList => "GET, HEAD, POST",
            Route::MultiModel(_) => "GET, HEAD, DELETE",
            _ => "GET, HEAD",
        }
    }
}

/// The route of `path`: a platform's own routes first (Vertex AI names its
/// paths), then the fixed ones.
fn parse_route<'a>(path: &'a str, platform: &super::platform::Platform) -> Option<Route<'a>> {
    if let Some(v) = &platform.vertex {
        if path == v.predict {
            return Some(Route::VertexPredict);
        }
        if path == v.health {
            return Some(Route::Ready);
        }
    }
    if platform.multi_model.is_some() {
        match path
            .trim_end_matches('/')
            .split('/')
            .skip(1)
            .collect::<Vec<_>>()[..]
        {
            ["models"] => return Some(Route::MultiModelList),
            ["models", m] => return Some(Route::MultiModel(m)),
            _ => {}
        }
    }
    fixed_route(path)
}

fn fixed_route(path: &str) -> Option<Route<'_>> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    Some(match segs.as_slice() {
        ["v2"] => Route::ServerMetadata,
        ["v2", "health", "live"] => Route::Live,
        ["v2", "health", "ready"] => Route::Ready,
        ["v2", "models", "stats"] => Route::ModelStats("", ""),
        ["v2", "models", m] => Route::ModelMetadata(m, ""),
        ["v2", "models", m, "ready"] => Route::ModelReady(m, ""),
        ["v2", "models", m, "config"] => Route::ModelConfig(m, ""),
        ["v2", "models", m, "stats"] => Route::ModelStats(m, ""),
        ["v2", "models", m, "infer"] => Route::Infer(m, ""),
        ["v2", "models", m, "drift"] => Route::Drift(m, ""),
        ["v2", "models", m, "versions", v, "drift"] => Route::Drift(m, v),
        ["v2", "models", m, "versions", v] => Route::ModelMetadata(m, v),
        ["v2", "models", m, "versions", v, "ready"] => Route::ModelReady(m, v),
        ["v2", "models", m, "versions", v, "config"] => Route::ModelConfig(m, v),
        ["v2", "models", m, "versions", v, "stats"] => Route::ModelStats(m, v),
        ["v2", "models", m, "versions", v, "infer"] => Route::Infer(m, v),
        ["v2", "repository", "index"] => Route::RepositoryIndex,
        ["v2", "repository", "models", m, "load"] => Route::RepositoryLoad(m),
        ["v2", "repository", "models", m, "unload"] => Route::RepositoryUnload(m),
        ["v1", "models"] => Route::V1List,
        ["v1", "embeddings"] => Route::OpenAiEmbeddings,
        ["embed"] => Route::TeiEmbed,
        ["v1", "models", m] => match m.strip_suffix(":predict") {
            Some(m) => Route::V1Predict(m),
            None => Route::V1Model(m),
        },
        ["invocations"] => Route::Invocations(None),
        // SageMaker's multi-model invoke, which its single-model image serves too.
        ["models", m, "invocations" | "invoke"] => Route::Invocations(Some(m)),
        ["ping"] | ["health"] => Route::Ping,
        ["metrics"] => Route::Metrics,
        ["admin", "models", m, "traffic"] => Route::Traffic(m),
        ["admin", "models", m, "rollout"] => Route::Rollout(m),
        ["admin", "fleet"] => Route::Fleet,
        ["console", ..] => Route::Console(&path["/console".len()..]),
        ["admin", "models"] => Route::AdminModels(""),
        ["admin", "models", m] => Route::AdminModels(m),
        _ => return None,
    })
}

/// The request's `Authorization` header, if it has a readable one.
fn authorization(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Checks an admin call; says who made it, for the log.
fn admin_caller(state: &State, req: &Request<Incoming>, peer: SocketAddr) -> Result<String> {
    same_origin(req, state.pipeline.auth.admin_token_set())?;
    let auth = authorization(req);
    state.pipeline.auth.check(auth, state.config.port)?;
    let how = if auth.is_some() {
        "bearer token"
    } else {
        "admin listener"
    };
    Ok(format!("{peer} ({how})"))
}

/// Refuses an admin call a browser makes for another site's page: without
/// a token the admin listener trusts whoever reaches it, and a page on any
/// site could otherwise POST to `127.0.0.1:8003` from its visitor's
/// browser (a form's POST needs no CORS preflight). Browsers name the page's
/// origin in `Origin` and `Sec-Fetch-Site`; curl and the CLI send neither.
/// Without a token, the `Host` must also be an address or `localhost`: a
/// page whose own name an attacker rebinds to this address is same-origin
/// to the browser, but names itself in `Host`.
fn same_origin(req: &Request<Incoming>, token_set: bool) -> Result<()> {
    let refused = |why: String| {
        Err(Error::Forbidden(format!(
            "admin call refused: {why}; admin calls from a browser come from the console on this listener"
        )))
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if !token_set && !host.is_none_or(address_or_localhost) {
        return Err(Error::Forbidden(format!(
            "admin call refused: without --admin-token the admin listener takes them only for an \
             IP address or localhost, not '{}' (a web page can rebind its own name to this \
             address); call it by address, or set --admin-token",
            host.unwrap_or_default()
        )));
    }
    if let Some(site) = req.headers().get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return refused(format!(
                "it came from a page of another site (Sec-Fetch-Site: {})",
                String::from_utf8_lossy(site.as_bytes())
            ));
        }
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h);
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => refused(format!(
            "its Origin ({}) is not this server",
            String::from_utf8_lossy(origin.as_bytes())
        )),
    }
}

/// A `Host` that names an IP address or `localhost`, with or without a port.
fn address_or_localhost(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// A model's traffic policy, the share each version gets, the shadow's
/// record, and where the policy is kept (etcd: its revision, for `If-Match`,
/// and whether the store answers).
pub(crate) fn traffic_json(
    model: &crate::serving::Model,
    store: Option<&crate::control::policy::PolicyStore>,
) -> serde_json::Value {
    let t = &model.traffic;
    let total: u64 = t.spec.weights.values().sum();
    let shares: serde_json::Map<String, serde_json::Value> = if total == 0 {
        model
            .default_version()
            .map(|d| (d.version.to_string(), serde_json::json!(1.0)))
            .into_iter()
            .collect()
    } else {
        t.spec
            .weights
            .iter()
            .map(|(v, w)| (v.clone(), serde_json::json!(*w as f64 / total as f64)))
            .collect()
    };
    let mut body = serde_json::to_value(&t.spec).expect("plain data");
    body["model"] = model.name.to_string().into();
    body["shares"] = shares.into();
    body["ready_versions"] = model
        .ready_numbers()
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .into();
    body["shadow_stats"] = model.shadow_stats.to_json();
    if !model.aliases.is_empty() {
        body["aliases"] = serde_json::to_value(&model.aliases).expect("plain data");
    }
    if let Some(e) = &model.policy_error {
        body["policy_error"] = e.as_str().into();
    }
    if let Some(s @ crate::control::policy::PolicyStore::Etcd(e)) = store {
        let mut health = serde_json::to_value(e.health()).expect("plain data");
        health["policy_revision"] = s.revision(&model.name).unwrap_or(0).into();
        body["store"] = health;
    }
    body
}

async fn route(
    state: &State,
    req: Request<Incoming>,
    peer: SocketAddr,
    hold: &Hold<'_>,
) -> Result<Response<Body>> {
    let uri = req.uri().clone();
    let path = uri.path();
    let route = parse_route(path, &state.config.platform)
        .ok_or_else(|| Error::not_found(format!("no such path: {path}")))?;
    let allow = route.allow();
    if !allow.split(", ").any(|m| m == req.method().as_str()) {
        return Err(Error::MethodNotAllowed {
            method: req.method().to_string(),
            path: path.to_string(),
            allow,
        });
    }
    let auth = &state.pipeline.auth;
    match route {
        Route::Infer(..)
        | Route::V1Predict(_)
        | Route::Invocations(_)
        | Route::OpenAiEmbeddings
        | Route::TeiEmbed
        | Route::VertexPredict => inference(state, route, req, hold).await,
        // Probes are always open: a kubelet carries no token (gRPC's
        // ModelReady is open too).
        Route::Live | Route::Ready | Route::Ping | Route::ModelReady(..) => {
            information(state, route).await
        }
        Route::Metrics => {
            auth.check_metrics(authorization(&req))?;
            information(state, route).await
        }
        Route::RepositoryIndex => {
            auth.check_read(authorization(&req))?;
            control(state, route, req, peer, hold).await
        }
        Route::RepositoryLoad(_)
        | Route::RepositoryUnload(_)
        | Route::Traffic(_)
        | Route::Rollout(_)
        | Route::Fleet
        | Route::AdminModels(_) => control(state, route, req, peer, hold).await,
        // Reading is open on the admin listener (it is not served elsewhere);
        // the changes its forms make go through the admin routes above.
        Route::Console(rest) => {
            // Its pages show what admin reads show: the same browser checks.
            same_origin(&req, auth.admin_token_set())?;
            let cx = super::console::Context {
                models: &state.models,
                control: &state.control,
                port: state.config.port,
                token_needed: auth.admin_token_set(),
                reads_protected: auth.reads_protected(),
            };
            super::console::serve(cx, rest).await
        }
        // The platform's agent calls these on the port it owns, with no token.
        Route::MultiModelList | Route::MultiModel(_) => multi_model(state, route, req, hold).await,
        _ => {
            auth.check_read(authorization(&req))?;
            information(state, route).await
        }
    }
}

/// The inference routes: each a codec through the one pipeline, in the
/// call's server span when spans are exported.
async fn inference(
    state: &State,
    route: Route<'_>,
    req: Request<Incoming>,
    hold: &Hold<'_>,
) -> Result<Response<Body>> {
    // Before anything a route does ahead of the pipeline (a version parsed, a
    // default model chosen, a body read for the model it names).
    state.pipeline.authorize(req.headers())?;
    let (parts, body) = req.into_parts();
    let scheme = if state.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let template = route.template().unwrap_or(parts.uri.path());
    let Some(mut span) = ServerSpan::http(&parts, template, scheme) else {
        return infer_route(state, route, &parts, body, hold, None).await;
    };
    let answer = infer_route(state, route, &parts, body, hold, Some(&mut span)).await;
    // A failure is answered here, so that it carries the `traceparent` too.
    let (mut resp, error) = match answer {
        Ok(resp) => (resp, None),
        Err(e) => (failed(&parts.method, parts.uri.path(), &e), Some(e)),
    };
    if let Some(v) = span.header() {
        resp.headers_mut().insert(TRACEPARENT, v);
    }
    span.end_http(resp.status(), error.as_ref());
    Ok(resp)
}

/// The header of a call's trace context, which its answer carries back.
const TRACEPARENT: header::HeaderName = header::HeaderName::from_static("traceparent");

async fn infer_route(
    state: &State,
    route: Route<'_>,
    parts: &http::request::Parts,
    body: Incoming,
    hold: &Hold<'_>,
    span: Option<&mut ServerSpan>,
) -> Result<Response<Body>> {
    let (bounds, max) = (&state.bounds, state.bounds.limits.max_body_bytes);
    let headers = &parts.headers;
    let input = |body| read_body(headers, body, bounds, max, hold);
    match route {
        Route::V1Predict(_) | Route::VertexPredict => {
            let name;
            let m = match route {
                Route::V1Predict(m) => m,
                _ => {
                    name = default_model(state)?;
                    &name
                }
            };
            let call = Call {
                model: m,
                version: None,
                headers,
                span,
            };
            state
                .pipeline
                .infer(call, &super::v1::Codec, input(body))
                .await
        }
        Route::Invocations(m) => {
            let name = match m {
                Some(m) => m.to_string(),
                None => default_model(state)?,
            };
            let codec = super::mlflow::Codec {
                content_type: headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            };
            let call = Call {
                model: &name,
                version: None,
                headers,
                span,
            };
            let mut resp = state.pipeline.infer(call, &codec, input(body)).await?;
            if let Some(v) = headers.get(super::platform::CUSTOM_ATTRIBUTES) {
                resp.headers_mut()
                    .insert(super::platform::CUSTOM_ATTRIBUTES, v.clone());
            }
            Ok(resp)
        }
        Route::OpenAiEmbeddings => openai_embeddings(state, parts, body, hold, span)
            .await
            .or_else(|e| {
                if e.http_status().is_server_error() {
                    tracing::warn!(path = "/v1/embeddings", error = %e, "request failed");
                }
                Ok(super::embeddings::openai_error(&e))
            }),
        Route::TeiEmbed => {
            let name = default_encoder(state)?;
            let call = Call {
                model: &name,
                version: None,
                headers,
                span,
            };
            state
                .pipeline
                .infer(call, &super::embeddings::Tei, input(body))
                .await
        }
        Route::Infer(m, v) => {
            let version = parse_version(m, v)?;
            let codec = v2::HttpCodec::new(headers);
            let call = Call {
                model: m,
                version,
                headers,
                span,
            };
            state.pipeline.infer(call, &codec, input(body)).await
        }

        other => Err(Error::Internal(format!(
            "{} routed to the wrong handler",
            other.allow()
        ))),
    }
}

/// The repository and admin routes: checked callers, actions off the async threads.
async fn control(
    state: &State,
    route: Route<'_>,
    req: Request<Incoming>,
    peer: SocketAddr,
    hold: &Hold<'_>,
) -> Result<Response<Body>> {
    let models = &state.models;
    let read = |req| read_control_body(state, req, hold);
    match route {
        Route::RepositoryIndex => {
            // Triton's body is optional: {"ready": true} lists ready models only.
            let body = read(req).await?;
            let ready = if body.iter().all(u8::is_ascii_whitespace) {
                false
            } else {
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::invalid(format!("malformed JSON request: {e}")))?;
                v.get("ready").and_then(|r| r.as_bool()).unwrap_or(false)
            };
            Ok(json(StatusCode::OK, v2::encode_index(&models.index(ready))))
        }
        Route::RepositoryLoad(m) | Route::RepositoryUnload(m) => {
            admin_caller(state, &req, peer)?;
            if matches!(route, Route::RepositoryLoad(_)) {
                state.control.load(m).await?;
            } else {
                state.control.unload(m).await?;
            }
            Ok(empty(StatusCode::OK))
        }
        Route::Traffic(m) => {
            let who = admin_caller(state, &req, peer)?;
            if req.method() == hyper::Method::PUT {
                let expect = if_match(&req)?;
                let body = read(req).await?;
                let spec: crate::core::config::TrafficSpec = serde_json::from_slice(&body)
                    .map_err(|e| Error::invalid(format!("not a traffic policy: {e}")))?;
                state.control.set_traffic_if(m, spec, &who, expect).await?;
            }
            Ok(json(
                StatusCode::OK,
                serde_json::to_vec(&traffic_json(
                    &*models.model(m)?,
                    state.control.policy_store(),
                ))
                .expect("plain data"),
            ))
        }
        Route::AdminModels(m) => {
            admin_caller(state, &req, peer)?;
            let only = (!m.is_empty()).then_some(m);
            let views = super::overview::read(models, &state.control, only, only.is_some()).await?;
            let body = match only {
                Some(m) => serde_json::to_vec(
                    &views
                        .into_iter()
                        .next()
                        .ok_or_else(|| Error::not_found(format!("unknown model '{m}'")))?,
                ),
                None => serde_json::to_vec(&serde_json::json!({ "models": views })),
            };
            Ok(json(StatusCode::OK, body.expect("plain data")))
        }
        Route::Fleet => {
            admin_caller(state, &req, peer)?;
            let body = match state.control.policy_store() {
                Some(crate::control::policy::PolicyStore::Etcd(e)) => serde_json::json!({
                    "store": e.health(),
                    "replicas": e.fleet(),
                    "rollout_leaders": e
                        .list("leaders")
                        .into_iter()
                        .map(|(model, l)| (model, l.value))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                }),
                Some(other) => serde_json::json!({
                    "store": {"kind": other.origin()},
                    "replicas": [],
                }),
                None => serde_json::json!({"store": null, "replicas": []}),
            };
            Ok(json(
                StatusCode::OK,
                serde_json::to_vec(&body).expect("plain data"),
            ))
        }
        Route::Rollout(m) => {
            let who = admin_caller(state, &req, peer)?;
            let status = match req.method().clone() {
                hyper::Method::POST => {
                    let body = read(req).await?;
                    let spec: crate::control::rollout::RolloutSpec = serde_json::from_slice(&body)
                        .map_err(|e| Error::invalid(format!("not a rollout: {e}")))?;
                    state.control.start_rollout(m, spec, &who).await?
                }
                hyper::Method::DELETE => state.control.abort_rollout(m, &who).await?,
                _ => state.control.rollout(m).await?,
            };
            Ok(json(
                StatusCode::OK,
                serde_json::to_vec(&status).expect("plain data"),
            ))
        }
        other => Err(Error::Internal(format!(
            "{} routed to the wrong handler",
            other.allow()
        ))),
    }
}

/// `If-Match: REVISION` on a policy change: the store revision (GET
/// traffic's `store.policy_revision`) it must replace; `"*"` or none: the one
/// this replica read.
fn if_match(req: &Request<Incoming>) -> Result<Option<i64>> {
    let Some(v) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("").trim().trim_matches('"');
    if v == "*" {
        return Ok(None);
    }
    v.parse::<i64>().map(Some).map_err(|_| {
        Error::invalid(format!(
            "If-Match '{v}' is not a policy revision (a number, as GET traffic's store.policy_revision)"
        ))
    })
}

/// The body of a control call (a policy, a rollout, a model to load): small,
/// so bounded by [`CONTROL_BODY_BYTES`] as well as `--max-body-bytes`.
async fn read_control_body(
    state: &State,
    req: Request<Incoming>,
    hold: &Hold<'_>,
) -> Result<Bytes> {
    let (parts, body) = req.into_parts();
    let limit = CONTROL_BODY_BYTES.min(state.bounds.limits.max_body_bytes);
    read_body(&parts.headers, body, &state.bounds, limit, hold).await
}

/// SageMaker's multi-model API on the repository's: `POST /models` registers a
/// folder under a name and loads it (409 if the name is loaded, 507 when
/// --memory-limit has no room for it), `DELETE /models/{m}` unloads it.
async fn multi_model(
    state: &State,
    route: Route<'_>,
    req: Request<Incoming>,
    hold: &Hold<'_>,
) -> Result<Response<Body>> {
    let registry = state
        .config
        .platform
        .multi_model
        .as_ref()
        .ok_or_else(|| Error::Internal("the multi-model API is off".into()))?;
    match (route, req.method().clone()) {
        (Route::MultiModelList, hyper::Method::POST) => {
            let body = read_control_body(state, req, hold).await?;
            let (name, url) = super::platform::parse_load(&body)?;
            let _one_at_a_time = registry.changes.lock().await;
            registry.register(&name, url)?;
            if let Err(e) = state.control.load(&name).await {
                // Not loaded: the name is free for another try.
                let _ = registry.remove(&name);
                let _ = state.control.remove(&name).await;
                return Err(e);
            }
            tracing::info!(model = %name, "loaded over the multi-model API");
            Ok(empty(StatusCode::OK))
        }
        (Route::MultiModelList, _) => {
            Ok(json(StatusCode::OK, super::platform::encode_list(registry)))
        }
        (Route::MultiModel(m), hyper::Method::DELETE) => {
            let _one_at_a_time = registry.changes.lock().await;
            registry.remove(m)?;
            state.control.remove(m).await?;
            tracing::info!(model = %m, "unloaded over the multi-model API");
            Ok(empty(StatusCode::OK))
        }
        (Route::MultiModel(m), _) => match registry.get(m) {
            Some(url) => Ok(small_json(super::platform::encode_model(m, &url))),
            None => Err(crate::control::repository::registered::not_loaded(m)),
        },
        (other, _) => Err(Error::Internal(format!(
            "{} routed to the wrong handler",
            other.allow()
        ))),
    }
}

/// Health, metadata, statistics, drift and metrics: reads of the table.
async fn information(state: &State, route: Route<'_>) -> Result<Response<Body>> {
    let models = &state.models;
    match route {
        Route::ServerMetadata => Ok(json(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({
                "name": "switchyard",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": super::EXTENSIONS,
            }))
            .expect("plain data"),
        )),
        // The status is what Triton's clients read; the body is what the Open
        // Inference Protocol specifies and KServe's clients read.
        Route::Live => Ok(small_json(serde_json::json!({ "live": true }))),
        Route::Ready => {
            if state.bounds.stopping.is_stopping() {
                Ok(stopping())
            } else if models.is_loaded() {
                Ok(small_json(serde_json::json!({ "ready": true })))
            } else {
                Ok(not_ready())
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
            Ok(small_json(serde_json::json!({ "name": m, "ready": true })))
        }
        Route::ModelConfig(m, v) => {
            let config = models.serving_config(m, parse_version(m, v)?)?;
            Ok(json(StatusCode::OK, v2::encode_model_config(&config)))
        }
        Route::ModelStats(m, v) => {
            let versions = models.versions_for_stats(m, parse_version(m, v)?)?;
            Ok(json(StatusCode::OK, v2::encode_stats(&versions)))
        }
        Route::Drift(m, v) => drift_report(models, m, v).await,
        Route::Metrics => metrics_text(state.models.clone(), &state.control).await,
        Route::V1List => {
            let mut names: Vec<String> = models
                .snapshot()
                .models
                .values()
                .filter(|m| m.default_version().is_some())
                .map(|m| m.name.to_string())
                .collect();
            names.sort();
            Ok(json(
                StatusCode::OK,
                serde_json::to_vec(&serde_json::json!({ "models": names })).expect("plain data"),
            ))
        }
        Route::V1Model(m) => {
            let model = models.model(m)?;
            let ready = model.default_version().is_some();
            Ok(json(
                StatusCode::OK,
                serde_json::to_vec(&serde_json::json!({ "name": m, "ready": ready }))
                    .expect("plain data"),
            ))
        }
        Route::Ping => {
            if state.bounds.stopping.is_stopping() {
                Ok(stopping())
            } else if models.is_loaded() {
                // What `mlflow models serve` answers.
                let mut r = Response::new(Full::new(Bytes::from_static(b"\n")));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok(r)
            } else {
                Ok(not_ready())
            }
        }
        other => Err(Error::Internal(format!(
            "{} routed to the wrong handler",
            other.allow()
        ))),
    }
}

/// `GET /v2/models/{m}[/versions/{v}]/drift`: the version's drift report.
async fn drift_report(models: &Models, m: &str, v: &str) -> Result<Response<Body>> {
    let mv = models.resolve(m, parse_version(m, v)?)?;
    let (version, reading) = (mv.version, mv.clone());
    // The report locks the monitor's window: off the async threads.
    let report = super::off_runtime("drift report", move || {
        let monitor = reading.observer::<crate::control::drift::Monitor>();
        Ok(monitor.map(|d| d.report()))
    })
    .await?
    .ok_or_else(|| {
        Error::not_found(format!(
            "model '{m}' version {version} has no drift profile (baseline.json beside its files; see `switchyard profile`)"
        ))
    })?;
    let mut body = serde_json::to_value(report).expect("plain data");
    body["model"] = m.into();
    body["version"] = version.to_string().into();
    Ok(json(
        StatusCode::OK,
        serde_json::to_vec(&body).expect("plain data"),
    ))
}

/// The model `POST /invocations` scores: `--default-model`, or the only one.
fn default_model(state: &State) -> Result<String> {
    default_of(state, |_| true).map_err(|n| {
        Error::not_found(format!(
            "this route scores the default model, and there is none: start with \
             --default-model NAME, or name the model (/models/NAME/invocations, \
             /v1/models/NAME:predict) ({n} models loaded)"
        ))
    })
}

/// `--default-model`, or the only model that `fits`; else how many fit.
fn default_of(
    state: &State,
    fits: impl Fn(&crate::serving::Model) -> bool,
) -> std::result::Result<String, usize> {
    if let Some(m) = &state.config.default_model {
        return Ok(m.clone());
    }
    let table = state.models.snapshot();
    let names: Vec<&String> = table
        .models
        .iter()
        .filter(|(_, m)| fits(m))
        .map(|(name, _)| name)
        .collect();
    match names.as_slice() {
        [only] => Ok((*only).clone()),
        names => Err(names.len()),
    }
}

/// `POST /v1/embeddings`: the model is named in the body, which is read
/// first (bounded as every body is).
async fn openai_embeddings(
    state: &State,
    parts: &http::request::Parts,
    body: Incoming,
    hold: &Hold<'_>,
    span: Option<&mut ServerSpan>,
) -> Result<Response<Body>> {
    let limit = state.bounds.limits.max_body_bytes;
    let body = read_body(&parts.headers, body, &state.bounds, limit, hold).await?;
    let request = super::embeddings::OpenAiRequest::parse(&body)?;
    let model = request.model.clone();
    let call = Call {
        model: &model,
        version: None,
        headers: &parts.headers,
        span,
    };
    let input = std::future::ready(Ok(request));
    state
        .pipeline
        .infer(call, &super::embeddings::OpenAi, input)
        .await
}

/// The model TEI's `POST /embed` embeds with: `--default-model`, or the only
/// text encoder served.
fn default_encoder(state: &State) -> Result<String> {
    default_of(state, |m| {
        m.default_version()
            .is_some_and(|v| v.metadata.platform == "safetensors_bert")
    })
    .map_err(|n| {
        Error::not_found(format!(
            "POST /embed embeds with the default model, and there is none: start with \
             --default-model NAME ({n} text encoders are ready)"
        ))
    })
}

/// A 200 with a binary body (Triton's binary tensor extension).
pub(super) fn binary(body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// Reads the whole body within `limit` bytes and the body timeout, holding
/// its bytes in the in-flight budget, and decompresses a gzip or deflate
/// `Content-Encoding` (the limit and the budget hold for the decompressed
/// size too).
async fn read_body(
    headers: &http::HeaderMap,
    body: Incoming,
    bounds: &Bounds,
    limit: usize,
    hold: &Hold<'_>,
) -> Result<Bytes> {
    let encoding = compression::content_encoding(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    let body = Metered::new(body, hold, bounds.limits.body_timeout);
    let raw = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Error::PayloadTooLarge { limit })
        }
        Err(e) => {
            return Err(match e.downcast::<super::limits::BodyError>() {
                Ok(e) => (*e).into(),
                Err(e) => Error::invalid(format!("could not read the request body: {e}")),
            })
        }
    };
    let raw_len = raw.len();
    let out = compression::decompress(raw, encoding, limit)?;
    if out.len() > raw_len {
        hold.take(out.len() - raw_len)?;
    }
    Ok(out)
}
