//! The one inference path of every protocol: authorise, look up, route, read
//! and decode, set the deadline, infer, observe, encode. A protocol is a
//! [`Codec`]; its listener only says where the request goes ([`Call`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::error::{Error, Result};
use crate::core::metadata::ModelMetadata;
use crate::core::request::{InferRequest, InferResponse, Protocol};
use crate::core::trace::KeyValue;
use crate::edge::trace::ServerSpan;
use crate::edge::AdminAuth;
use crate::serving::{traffic::routing_key, Model, ModelVersion, Models, Routed};

/// One protocol's translation between its wire format and the neutral request.
pub trait Codec {
    /// What the listener hands over: a body, a protobuf message.
    type Input;
    /// What the listener sends back.
    type Output;
    /// What decoding learns that encoding needs (the outputs' formats, rows
    /// or columns).
    type Shape;
    /// The front end, for the metrics.
    const PROTOCOL: Protocol;
    /// Whether decoding needs the metadata of the version that answers (rows
    /// of a table become the model's input tensors). Such a request is routed
    /// before its body is read; others are routed after decoding, on the
    /// routing key they may carry.
    const NEEDS_METADATA: bool;

    /// Decodes `input`, a request to `call`'s model; `meta` is given when
    /// [`Codec::NEEDS_METADATA`].
    fn decode(
        &self,
        input: Self::Input,
        call: &Call<'_>,
        meta: Option<&ModelMetadata>,
    ) -> Result<(InferRequest, Self::Shape)>;

    /// Encodes the answer.
    fn encode(&self, response: InferResponse, shape: Self::Shape) -> Result<Self::Output>;
}

/// The routed version's metadata that a [`Codec::NEEDS_METADATA`] codec is
/// always given: an error, not a panic, if a codec is declared otherwise.
pub fn given(meta: Option<&ModelMetadata>) -> Result<&ModelMetadata> {
    meta.ok_or_else(|| Error::Internal("a codec that decodes rows was given no metadata".into()))
}

/// Request headers (HTTP) or metadata (gRPC), by lower-case name.
pub trait Headers: Sync {
    fn header(&self, name: &str) -> Option<&[u8]>;
}

impl Headers for http::HeaderMap {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }
}

impl Headers for tonic::metadata::MetadataMap {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }
}

/// Where one inference call goes, as its listener read it.
pub struct Call<'a> {
    pub model: &'a str,
    /// Set when the client addressed a version.
    pub version: Option<u64>,
    pub headers: &'a dyn Headers,
    /// The call's span, which the listener started and ends.
    pub span: Option<&'a mut ServerSpan>,
}

impl Call<'_> {
    /// The `grpc-timeout` deadline, from gRPC metadata or an HTTP header alike
    /// (as gRPC-Web sends it over HTTP/1.1).
    fn timeout(&self) -> Result<Option<Duration>> {
        match self.headers.header("grpc-timeout") {
            None => Ok(None),
            Some(v) => grpc_timeout(v).map(Some),
        }
    }

    /// The value of the header that `model`'s traffic policy pins callers by.
    fn sticky_key(&self, model: &Model) -> Option<Vec<u8>> {
        let name = model.traffic.sticky_header.as_deref()?;
        self.headers
            .header(&name.to_ascii_lowercase())
            .map(<[u8]>::to_vec)
    }
}

/// Reads `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`, per the gRPC spec).
pub fn grpc_timeout(v: &[u8]) -> Result<Duration> {
    let bad = || {
        Error::invalid(format!(
            "grpc-timeout {:?} is not <digits><unit>",
            String::from_utf8_lossy(v)
        ))
    };
    // ASCII only: the unit is split off by byte, which must be a char boundary.
    let s = std::str::from_utf8(v)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(bad)?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (n, unit) = s.split_at(s.len() - 1);
    if !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = n.parse().map_err(|_| bad())?;
    Ok(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    })
}

/// What every protocol's inference goes through.
#[derive(Clone)]
pub struct Pipeline {
    pub models: Arc<Models>,
    pub auth: AdminAuth,
}

impl Pipeline {
    pub fn new(models: Arc<Models>, auth: AdminAuth) -> Self {
        Pipeline { models, auth }
    }

    /// Checks the API token of a call's headers: the first step of every
    /// inference, which a listener that must read something first (a body
    /// naming the model) takes before that.
    pub fn authorize(&self, headers: &dyn Headers) -> Result<()> {
        let token = headers
            .header("authorization")
            .and_then(|v| std::str::from_utf8(v).ok());
        self.auth.check_api(token)
    }

    /// Runs one inference call: `input` is awaited (a body read) only once the
    /// caller is authorised and the model exists, so a wrong name is answered
    /// at once. A `grpc-timeout` counts from here, the body's upload included.
    pub async fn infer<C: Codec>(
        &self,
        mut call: Call<'_>,
        codec: &C,
        input: impl Future<Output = Result<C::Input>>,
    ) -> Result<C::Output> {
        let started = Instant::now();
        self.authorize(call.headers)?;
        let deadline = call.timeout()?.map(|d| (started.checked_add(d), d));
        let model = self.models.model(call.model)?;
        if call.version.is_some() {
            model.resolve(call.version)?;
        }
        let header_key = call.sticky_key(&model);
        let mut span = call.span.take();
        // The clock is read for the stages' spans only when they are made.
        let traced = span.as_ref().is_some_and(|s| s.trace().is_some());
        let now = || if traced { Instant::now() } else { started };
        // When the request is decoded and routed: the ends of those stages.
        let (mut request, shape, routed, decoded, route) = if C::NEEDS_METADATA {
            let routed = model.route(call.version, header_key.as_deref())?;
            let route = (started, now());
            let decoded = input
                .await
                .and_then(|i| codec.decode(i, &call, Some(&routed.primary.metadata)));
            match decoded {
                Ok((request, shape)) => (request, shape, routed, (route.1, now()), route),
                Err(e) => return Err(refused::<C>(&routed.primary, e)),
            }
        } else {
            match input.await.and_then(|i| codec.decode(i, &call, None)) {
                Ok((request, shape)) => {
                    let decoded = (started, now());
                    let key = routing_key(&request.parameters).or(header_key);
                    let routed = model.route(call.version, key.as_deref())?;
                    (request, shape, routed, decoded, (decoded.1, now()))
                }
                Err(e) => {
                    // Counted against the version named, else the default one.
                    if let Ok(v) = model.resolve(call.version) {
                        return Err(refused::<C>(&v, e));
                    }
                    return Err(e);
                }
            }
        };
        request.traceparent = match &mut span {
            Some(span) => {
                trace_routing(span, &routed, decoded, route);
                request.trace = span.trace().cloned();
                Some(span.traceparent())
            }
            None => call
                .headers
                .header("traceparent")
                .and_then(crate::core::request::TraceParent::parse),
        };
        let response = run::<C>(routed, request, deadline).await?;
        let Some(span) = span.filter(|s| s.trace().is_some()) else {
            return codec.encode(response, shape);
        };
        let encoding = Instant::now();
        let encoded = codec.encode(response, shape);
        span.stage("switchyard.encode", (encoding, Instant::now()), Vec::new());
        encoded
    }
}

/// The spans of a traced request's decoding and routing, and what routing
/// chose on its server span.
fn trace_routing(
    span: &mut ServerSpan,
    routed: &Routed,
    decoded: (Instant, Instant),
    route: (Instant, Instant),
) {
    if span.trace().is_none() {
        return;
    }
    let primary = &routed.primary;
    let mut chosen = vec![
        KeyValue::new("switchyard.model", primary.model.to_string()),
        KeyValue::new("switchyard.version", primary.version as i64),
        KeyValue::new("switchyard.routing", routed.routing.as_str()),
    ];
    if let Some((shadow, _)) = &routed.shadow {
        chosen.push(KeyValue::new(
            "switchyard.shadow.version",
            shadow.version as i64,
        ));
    }
    span.stage("switchyard.decode", decoded, Vec::new());
    span.stage("switchyard.route", route, chosen.clone());
    span.set(chosen);
}

/// Counts a request that its version never answered (it could not be read or
/// decoded, or its deadline passed first) in that version's metrics, so that
/// every protocol's refusals show alike.
fn refused<C: Codec>(version: &ModelVersion, e: Error) -> Error {
    version.stats.metrics.failed(C::PROTOCOL, &e);
    e
}

/// Infers within the deadline: past it, the request is answered
/// DEADLINE_EXCEEDED, and dropping the future drops the reply channel, so a
/// request still queued is skipped by its worker instead of computed.
async fn run<C: Codec>(
    routed: Routed,
    mut request: InferRequest,
    deadline: Option<(Option<Instant>, Duration)>,
) -> Result<InferResponse> {
    request.protocol = C::PROTOCOL;
    // Past what an Instant can hold is no deadline at all.
    let Some((Some(at), d)) = deadline else {
        return routed.infer(request).await;
    };
    request.deadline = Some(at);
    let primary = routed.primary.clone();
    let at = tokio::time::Instant::from_std(at);
    match tokio::time::timeout_at(at, routed.infer(request)).await {
        Ok(answer) => answer,
        // The version's own count never saw the end of a dropped request.
        Err(_) => Err(refused::<C>(
            &primary,
            Error::DeadlineExceeded(format!("the request's deadline of {d:?} passed")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_says() {
        assert_eq!(grpc_timeout(b"100m").unwrap(), Duration::from_millis(100));
        assert_eq!(grpc_timeout(b"1n").unwrap(), Duration::from_nanos(1));
        assert_eq!(grpc_timeout(b"2H").unwrap(), Duration::from_secs(7200));
        assert_eq!(grpc_timeout(b"5S").unwrap(), Duration::from_secs(5));
        assert_eq!(grpc_timeout(b"7u").unwrap(), Duration::from_micros(7));
        let accented = "1\u{e9}".as_bytes();
        for bad in [
            &b"m"[..],
            b"10",
            b"123456789S",
            b"+1S",
            b"1x",
            b"\xff1S",
            accented,
        ] {
            assert!(grpc_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
