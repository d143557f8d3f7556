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
    pub traceparent: Option<TraceParent>,
    /// Set when the request is traced: its stages become spans.
    pub trace: Option<crate::core::trace::Trace>,
}

/// A span's W3C identity, as a `traceparent` header carries it
/// (`00-<trace id>-<span id>-<flags>`): kept as bytes, written out only where
/// a header or a record needs it (a request carries one when spans are
/// exported, traced or not: no allocation for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` header; `None` for one that is malformed, which
    /// the spec says to ignore. A later version's value is read as version
    /// 00 (its first four fields), as the spec asks of a version 00 reader.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let s = std::str::from_utf8(value).ok()?.trim();
        let mut parts = s.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        // Version 00 has exactly four fields; a later one may add more.
        let ok = hex(version, 2)
            && version != "ff"
            && (version != "00" || parts.next().is_none())
            && hex(trace, 32)
            && hex(span, 16)
            && hex(flags, 2);
        if !ok {
            return None;
        }
        let mut tp = TraceParent {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        unhex(trace, &mut tp.trace_id)?;
        unhex(span, &mut tp.span_id)?;
        // W3C: an all-zero trace id or parent id is invalid.
        (tp.trace_id != [0; 16] && tp.span_id != [0; 8]).then_some(tp)
    }

    /// Whether the span was sampled (bit 0 of the flags).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut out = [0; 32];
        hex(&self.trace_id, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The header's value, 55 ASCII bytes.
    pub fn to_header(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        hex(&self.trace_id, &mut out[3..35]);
        hex(&self.span_id, &mut out[36..52]);
        hex(&[self.flags], &mut out[53..55]);
        out
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.to_header()).map_err(|_| std::fmt::Error)?)
    }
}

/// Writes `bytes` as lowercase hex into `out` (twice as long).
fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// Reads hex digits (checked already) into `out`.
fn unhex(digits: &str, out: &mut [u8]) -> Option<()> {
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
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
        let tp = TraceParent::parse(value.as_bytes()).unwrap();
        assert_eq!(tp.to_string(), value);
        assert_eq!(tp.trace_id_hex(), id);
        assert_eq!(tp.span_id, [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(tp.sampled());
        let flags =
            |f: &str| TraceParent::parse(format!("00-{id}-00f067aa0ba902b7-{f}").as_bytes());
        assert!(!flags("00").unwrap().sampled());
        assert!(flags("03").unwrap().sampled());
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
        // A later version may carry more fields; it is read as version 00.
        let later = TraceParent::parse(format!("01-{id}-00f067aa0ba902b7-01-what").as_bytes());
        assert_eq!(later, Some(tp));
    }
}
