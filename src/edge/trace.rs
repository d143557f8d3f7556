//! The server span of an inference call: the caller's W3C trace context
//! (`traceparent`, `tracestate`) read from its HTTP headers or gRPC metadata,
//! the span the pipeline's stages nest under, and the `traceparent` that goes
//! back with the answer, sampled or not. Attribute names follow
//! OpenTelemetry's semantic conventions for HTTP and RPC servers.

use std::str::FromStr;
use std::time::Instant;

use http::HeaderValue;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry_sdk::trace::Span;

use crate::core::error::Error;
use crate::core::request::TraceParent;
use crate::core::trace::{Clock, KeyValue, Trace};
use crate::edge::pipeline::Headers;

/// The gRPC service every inference call of the V2 protocol is a method of.
pub const GRPC_SERVICE: &str = "inference.GRPCInferenceService";

/// A call's span, from its arrival until its answer.
pub struct ServerSpan {
    /// Set when sampled; a call not traced has only its ids.
    span: Option<Span>,
    /// Set when sampled: the stages become child spans.
    trace: Option<Trace>,
    traceparent: TraceParent,
}

impl ServerSpan {
    /// Starts a call's span, a child of the caller's when its headers carry
    /// one; `None` when no spans are exported. A call not traced gets ids
    /// only (for the `traceparent` it answers with): no span, no attributes.
    fn start(
        headers: &dyn Headers,
        name: impl FnOnce() -> String,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<ServerSpan> {
        let tracer = crate::core::trace::tracer()?;
        // Parent-based: the caller's decision when it sent one, else a draw.
        let caller = headers.header("traceparent").and_then(TraceParent::parse);
        let traced = match &caller {
            Some(tp) => tp.sampled(),
            None => crate::core::trace::draw(),
        };
        if !traced {
            return Some(ServerSpan {
                span: None,
                trace: None,
                traceparent: crate::core::trace::untraced(caller),
            });
        }
        // The caller's span as the parent, its `tracestate` kept (dropped if
        // malformed, as the spec allows).
        let parent = match caller {
            Some(tp) => {
                let state = headers
                    .header("tracestate")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| TraceState::from_str(v).ok())
                    .unwrap_or_default();
                let cx = SpanContext::new(
                    TraceId::from_bytes(tp.trace_id),
                    SpanId::from_bytes(tp.span_id),
                    TraceFlags::new(tp.flags),
                    true,
                    state,
                );
                opentelemetry::Context::new().with_remote_span_context(cx)
            }
            None => opentelemetry::Context::new(),
        };
        let span = tracer
            .span_builder(name())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes())
            .start_with_context(tracer, &parent);
        let trace = Trace::of(&span, Clock::now());
        let traceparent = crate::core::trace::identity(span.span_context());
        Some(ServerSpan {
            span: Some(span),
            trace,
            traceparent,
        })
    }

    /// An HTTP call's span: `{method} {route}` and the request's attributes.
    pub fn http(
        parts: &http::request::Parts,
        route: &str,
        scheme: &'static str,
    ) -> Option<ServerSpan> {
        let method = parts.method.as_str();
        let attributes = || {
            let mut kv = vec![
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("http.route", route.to_string()),
                KeyValue::new("url.path", parts.uri.path().to_string()),
                KeyValue::new("url.scheme", scheme),
                KeyValue::new(
                    "network.protocol.version",
                    match parts.version {
                        http::Version::HTTP_2 => "2",
                        http::Version::HTTP_10 => "1.0",
                        _ => "1.1",
                    },
                ),
            ];
            let host = parts
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok());
            kv.extend(server_address(host));
            if let Some(agent) = parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
            {
                kv.push(KeyValue::new("user_agent.original", agent.to_string()));
            }
            kv
        };
        Self::start(&parts.headers, || format!("{method} {route}"), attributes)
    }

    /// A gRPC call's span: `{service}/{method}` and the call's attributes.
    pub fn grpc(
        headers: &dyn Headers,
        method: &'static str,
        authority: Option<&str>,
    ) -> Option<ServerSpan> {
        let attributes = || {
            let mut kv = vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", GRPC_SERVICE),
                KeyValue::new("rpc.method", method),
            ];
            kv.extend(server_address(authority));
            kv
        };
        Self::start(headers, || format!("{GRPC_SERVICE}/{method}"), attributes)
    }

    /// The trace the request's stages nest in, when sampled.
    pub fn trace(&self) -> Option<&Trace> {
        self.trace.as_ref()
    }

    /// This span's W3C `traceparent`, which the answer carries and a capture
    /// sink is sent.
    pub fn traceparent(&self) -> TraceParent {
        self.traceparent
    }

    /// Adds attributes learnt on the way (the model, the version that answers).
    pub fn set(&mut self, attributes: impl IntoIterator<Item = KeyValue>) {
        if let Some(span) = &mut self.span {
            span.set_attributes(attributes);
        }
    }

    /// Records a stage of the call that ran from `start` to `end`.
    pub fn stage(&self, name: &'static str, times: (Instant, Instant), attributes: Vec<KeyValue>) {
        if let Some(t) = &self.trace {
            t.stage(name, times, attributes, Vec::new());
        }
    }

    /// The `traceparent` header of the answer.
    pub fn header(&self) -> Option<HeaderValue> {
        HeaderValue::from_bytes(&self.traceparent.to_header()).ok()
    }

    /// Ends an HTTP call's span with its answer's status: failed when the
    /// server failed (5xx), as the conventions say of server spans.
    pub fn end_http(self, status: http::StatusCode, error: Option<&Error>) {
        let Some(mut span) = self.span else {
            return;
        };
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", status.as_str().to_string()));
            span.set_status(Status::error(
                error.map_or_else(String::new, ToString::to_string),
            ));
        }
        span.end();
    }

    /// Ends a gRPC call's span with its outcome (`None`: OK).
    pub fn end_status(self, failure: Option<&tonic::Status>) {
        match failure {
            None => self.end_grpc(tonic::Code::Ok, None),
            Some(s) => self.end_grpc(s.code(), Some(s.message())),
        }
    }

    /// Ends a gRPC call's span with its status code: failed for the codes
    /// the conventions count as a server's errors.
    fn end_grpc(self, code: tonic::Code, error: Option<&str>) {
        let Some(mut span) = self.span else {
            return;
        };
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
        use tonic::Code::*;
        if matches!(
            code,
            Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
        ) {
            span.set_attribute(KeyValue::new("error.type", format!("{code:?}")));
            span.set_status(Status::error(error.unwrap_or_default().to_string()));
        }
        span.end();
    }
}

/// `server.address` and `server.port` from a `Host` or `:authority` value.
fn server_address(host: Option<&str>) -> Vec<KeyValue> {
    let Some(host) = host else {
        return Vec::new();
    };
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some((name, port)) if !port.contains(']') => (name, port.parse::<i64>().ok()),
        _ => (host, None),
    };
    let mut kv = vec![KeyValue::new("server.address", name.to_string())];
    kv.extend(port.map(|p| KeyValue::new("server.port", p)));
    kv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_give_address_and_port() {
        let kv = server_address(Some("[::1]:8000"));
        assert_eq!(kv[0].value.as_str(), "[::1]");
        assert_eq!(kv[1].value, opentelemetry::Value::I64(8000));
        assert_eq!(server_address(Some("[::1]")).len(), 1);
        assert_eq!(server_address(Some("example.com")).len(), 1);
        assert!(server_address(None).is_empty());
    }
}
