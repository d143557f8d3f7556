//! A request's place in a distributed trace, as every layer sees it: the
//! process's tracer (set once, when spans are exported) and the [`Trace`] a
//! sampled request carries from its listener to the worker that computes it,
//! whose stages become child spans with the times they really took.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, TraceContextExt, TraceFlags, Tracer as _,
};
use opentelemetry::Context;
pub use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::core::request::TraceParent;

/// The name of the span of a shadow copy, a root of its own trace linked to
/// the primary's server span, made only when the primary is traced.
pub const SHADOW_SPAN: &str = "switchyard.shadow";

/// The most links a batch's span carries to the other requests in it.
pub const MAX_BATCH_LINKS: usize = 32;

/// The process's tracer, and the share of calls without a caller's decision
/// that are traced.
struct Tracing {
    tracer: SdkTracer,
    ratio: f64,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Makes `tracer` the process's, once, tracing `ratio` of the calls that
/// bring no sampling decision; false if one was set before.
pub fn install(tracer: SdkTracer, ratio: f64) -> bool {
    TRACING.set(Tracing { tracer, ratio }).is_ok()
}

/// The process's tracer, when spans are exported; `None` costs one load.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACING.get().map(|t| &t.tracer)
}

/// Whether a call that brings no sampling decision is traced: a draw at the
/// ratio. Made here rather than by the SDK's ratio sampler so that the calls
/// not traced (most, at a small ratio) never reach the SDK: an unsampled
/// span of its own cost a call 1,500 instructions, 2 % of a small model's.
pub fn draw() -> bool {
    TRACING
        .get()
        .is_some_and(|t| t.ratio >= 1.0 || fastrand::f64() < t.ratio)
}

/// The identity of a call that is not traced: the caller's trace (else a
/// new one) and a span id of its own, which its answer's `traceparent` names.
pub fn untraced(caller: Option<TraceParent>) -> TraceParent {
    TraceParent {
        trace_id: caller.map_or_else(|| fastrand::u128(1..).to_be_bytes(), |c| c.trace_id),
        span_id: fastrand::u64(1..).to_be_bytes(),
        flags: 0,
    }
}

/// The identity of a span begun here.
pub fn identity(cx: &SpanContext) -> TraceParent {
    TraceParent {
        trace_id: cx.trace_id().to_bytes(),
        span_id: cx.span_id().to_bytes(),
        flags: (cx.trace_flags() & TraceFlags::SAMPLED).to_u8(),
    }
}

/// Maps the [`Instant`]s the serving layer measures with to the wall-clock
/// times spans carry, from one reading of both.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    instant: Instant,
    system: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    pub fn at(&self, t: Instant) -> SystemTime {
        match t.checked_duration_since(self.instant) {
            Some(after) => self.system + after,
            None => self.system - self.instant.duration_since(t),
        }
    }
}

/// A sampled request's trace: the span its stages nest under. Shared, so
/// that the request and its queued job stay small.
#[derive(Debug, Clone)]
pub struct Trace(Arc<Parent>);

#[derive(Debug)]
struct Parent {
    /// The request's server span (or its shadow copy's span).
    span: SpanContext,
    clock: Clock,
}

impl Trace {
    /// The trace of a span started here; `None` when it is not sampled, so
    /// that nothing below it is built.
    pub fn of(span: &Span, clock: Clock) -> Option<Trace> {
        let cx = span.span_context();
        cx.is_sampled().then(|| {
            Trace(Arc::new(Parent {
                span: local(cx),
                clock,
            }))
        })
    }

    fn context(&self) -> Context {
        Context::new().with_remote_span_context(self.0.span.clone())
    }

    /// Records a stage that ran from `start` to `end` as a child span; returns
    /// its trace, for stages within it.
    pub fn stage(
        &self,
        name: &'static str,
        (start, end): (Instant, Instant),
        attributes: Vec<KeyValue>,
        links: Vec<Link>,
    ) -> Option<Trace> {
        let tracer = tracer()?;
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(self.0.clock.at(start))
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(tracer, &self.context());
        let trace = Trace::of(&span, self.0.clock);
        span.end_with_timestamp(self.0.clock.at(end));
        trace
    }

    /// Starts the span of a shadow copy of this request, now: the root of a
    /// trace of its own, linked to this one (a shadow is no part of the
    /// answer's time), ended by the caller.
    pub fn shadow(&self, attributes: Vec<KeyValue>) -> Option<(Open, Trace)> {
        let tracer = tracer()?;
        let link = Link::new(
            self.0.span.clone(),
            vec![KeyValue::new("switchyard.link", "primary")],
            0,
        );
        let span = tracer
            .span_builder(SHADOW_SPAN)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .with_links(vec![link])
            .start_with_context(tracer, &Context::new());
        let trace = Trace::of(&span, Clock::now())?;
        Some((Open(span), trace))
    }

    /// A link to this request's span from a span of another (a batch's).
    pub fn link(&self) -> Link {
        Link::with_context(self.0.span.clone())
    }
}

/// A span started and not yet ended.
pub struct Open(Span);

impl Open {
    /// Ends the span now, failed with `error` if given.
    pub fn end(mut self, error: Option<String>) {
        if let Some(e) = error {
            self.0.set_status(opentelemetry::trace::Status::error(e));
        }
        self.0.end();
    }
}

/// `cx` as the parent of spans in this process (a remote parent would be
/// exported as one).
fn local(cx: &SpanContext) -> SpanContext {
    SpanContext::new(
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags(),
        false,
        cx.trace_state().clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};

    #[test]
    fn a_clock_maps_instants_either_side_of_its_reading() {
        let c = Clock::now();
        let later = c.instant + std::time::Duration::from_millis(5);
        assert_eq!(c.at(later).duration_since(c.system).unwrap().as_millis(), 5);
        if let Some(earlier) = c.instant.checked_sub(std::time::Duration::from_millis(3)) {
            assert_eq!(
                c.system.duration_since(c.at(earlier)).unwrap().as_millis(),
                3
            );
        }
    }

    #[test]
    fn identities_print_as_w3c_says() {
        let cx = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        );
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(identity(&cx).to_string(), value);
        let caller = TraceParent::parse(value.as_bytes());
        let mine = untraced(caller);
        assert_eq!(mine.trace_id, identity(&cx).trace_id);
        assert!(!mine.sampled() && mine.span_id != [0; 8]);
        assert_ne!(untraced(None).trace_id, [0; 16]);
    }
}
