//! The protocol-neutral inference request and response that every codec translates to and from.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::core::tensor::Tensor;

/// Request and tensor parameters, passed through as the client sent them.
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// One inference request, whatever protocol it came in on.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub model: String,
    /// Set when the client addressed a version explicitly (`/versions/{v}`).
    pub version: Option<u64>,
    pub inputs: Vec<Tensor>,
    /// Outputs to return; empty means all of them.
    pub outputs: Vec<RequestedOutput>,
    pub parameters: Parameters,
    /// When the protocol gave one (gRPC's `grpc-timeout`): past it, a request still
    /// queued is answered DEADLINE_EXCEEDED instead of computed.
    pub deadline: Option<std::time::Instant>,
    /// The front end it came through, for the metrics.
    pub protocol: Protocol,
    /// How the model's traffic policy sent it to its version (the router sets it).
    pub routing: Routing,
    /// The W3C `traceparent` of the request's server span when spans are
    /// exported, else the caller's, when it sent a valid one.
    pub traceparent: Option<String>,
    /// Set when the request is traced: its stages become spans.
    pub trace: Option<crate::core::trace::Trace>,
}

/// A W3C `traceparent` value (`00-<trace id>-<parent id>-<flags>`) as it
/// came, checked; `None` for one that is malformed, which the spec says to
/// ignore.
pub fn traceparent(traceparent: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(traceparent).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |p: &str| p.bytes().all(|b| b == b'0');
    // Version 00 has exactly four fields; a later one may add more.
    let ok = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && !zero(trace)
        && hex(parent, 16)
        && !zero(parent)
        && hex(flags, 2);
    ok.then(|| s.to_string())
}

/// The trace id (32 lowercase hex digits) of a value [`traceparent`] accepted.
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.get(3..35).unwrap_or("")
}

/// Whether the caller of a value [`traceparent`] accepted sampled its span
/// (bit 0 of the flags).
pub fn sampled(traceparent: &str) -> bool {
    traceparent
        .get(53..55)
        .and_then(|f| u8::from_str_radix(f, 16).ok())
        .is_some_and(|f| f & 1 == 1)
}

/// How a request reached the version that answers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Routing {
    /// No policy splits the model: its default version.
    #[default]
    Default,
    /// The client named the version.
    Named,
    /// A weighted draw of the traffic policy (a canary split).
    Weighted,
    /// A sticky key hashed to the version.
    Sticky,
    /// A shadow copy: measured, its answer dropped.
    Shadow,
}

impl Routing {
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Default => "default",
            Routing::Named => "named",
            Routing::Weighted => "weighted",
            Routing::Sticky => "sticky",
            Routing::Shadow => "shadow",
        }
    }
}

/// The front end a request came through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Http,
    Grpc,
}

impl InferRequest {
    /// A request of whole input tensors, all outputs wanted; sizes are checked here.
    pub fn of_inputs(
        model: &str,
        version: Option<u64>,
        inputs: Vec<Tensor>,
    ) -> crate::Result<Self> {
        for t in &inputs {
            t.validate_size()?;
        }
        Ok(InferRequest {
            model: model.to_string(),
            version,
            inputs,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct RequestedOutput {
    pub name: String,
    pub parameters: Parameters,
}

/// The answer to one [`InferRequest`].
#[derive(Debug, Clone)]
pub struct InferResponse {
    pub id: Option<String>,
    pub model: Arc<str>,
    pub version: u64,
    pub outputs: Vec<Tensor>,
    pub parameters: Parameters,
}

/// Requests the front ends have received and not yet answered, server-wide.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// Counts one received request, from the moment its connection hands it to
/// the service until the answer is made (dropped). An HTTP/2 connection hands
/// over every stream whose headers it has read before the first of them runs,
/// so a crowd on one connection shows here, where the serving layer looks
/// before it runs a request on the caller's thread instead of queueing it.
pub struct Received(());

impl Received {
    pub fn enter() -> Self {
        RECEIVED.fetch_add(1, Relaxed);
        Received(())
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        RECEIVED.fetch_sub(1, Relaxed);
    }
}

/// Whether requests besides the caller's are received and not yet answered.
pub fn others_received() -> bool {
    RECEIVED.load(Relaxed) > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_read_as_w3c_trace_context_says() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let value = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(
            traceparent(value.as_bytes()).as_deref(),
            Some(value.as_str())
        );
        assert_eq!(trace_id(&value), id);
        assert!(sampled(&value));
        assert!(!sampled(&format!("00-{id}-00f067aa0ba902b7-00")));
        assert!(sampled(&format!("00-{id}-00f067aa0ba902b7-03")));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert_eq!(traceparent(bad.as_bytes()), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(traceparent(format!("01-{id}-00f067aa0ba902b7-01-what").as_bytes()).is_some());
    }
}
