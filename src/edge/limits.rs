//! Edge budgets: how long a client may take to send a request, and how many
//! request bytes the server holds at once across every connection. Each bound
//! protects the server from its clients; none of them is on the path of a
//! client that sends a request at the speed of its network.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::core::error::Error;
use crate::core::tasks::Stopping;

/// Largest body of a route that is not inference (repository index, admin,
/// traffic, rollout): their JSON is a few hundred bytes, and parsed into a
/// tree it takes many times its size.
pub const CONTROL_BODY_BYTES: usize = 64 << 10;

/// The edge's bounds, as the flags set them.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A connection must deliver a request head (or h2's preface and first
    /// HEADERS) within this of being accepted, and a keep-alive HTTP/1.1
    /// connection the next head within this of its first byte.
    pub header_timeout: Duration,
    /// A connection with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// A request body (a gRPC message) must arrive within this of its start.
    pub body_timeout: Duration,
    /// Open connections across every listener; more are closed on accept.
    pub max_connections: usize,
    /// Largest request body (HTTP) or message (gRPC).
    pub max_body_bytes: usize,
    /// Request bytes being read or decoded across every connection.
    pub max_inflight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_body_bytes: super::http::DEFAULT_MAX_BODY_BYTES,
            max_inflight_bytes: 1 << 30,
        }
    }
}

/// The bounds every listener shares: the limits, the in-flight budget, the
/// count of open connections, and the stop (readiness turns 503 once it
/// begins; the drain takes what is left of its budget).
#[derive(Clone, Debug)]
pub struct Bounds {
    pub limits: Limits,
    pub budget: Arc<Budget>,
    pub connections: Arc<Connections>,
    pub stopping: Arc<Stopping>,
}

/// Connections the admin and metrics listeners take, each its own count: a
/// flood on the public ports must not lock out an operator or a scrape.
const PRIVATE_CONNECTIONS: usize = 256;

impl Bounds {
    pub fn new(limits: Limits, stopping: Arc<Stopping>) -> Bounds {
        Bounds {
            budget: Budget::new(limits.max_inflight_bytes),
            connections: Connections::new(limits.max_connections),
            stopping,
            limits,
        }
    }

    /// The same bounds with a connection count of its own (the admin and
    /// metrics listeners').
    pub fn private(&self) -> Bounds {
        Bounds {
            connections: Connections::new(PRIVATE_CONNECTIONS),
            ..self.clone()
        }
    }
}

/// Open connections across every listener, against `--max-connections`.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    max: usize,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Counts one more open connection if there is room.
    pub(super) fn open(self: &Arc<Self>) -> Option<Opened> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("switchyard_open_connections").increment(1.0);
        Some(Opened(self.clone()))
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One counted connection, uncounted when dropped.
pub(super) struct Opened(Arc<Connections>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("switchyard_open_connections").decrement(1.0);
    }
}

/// Request bytes held across all connections: a counter, not a semaphore,
/// because a request that does not fit is refused (429), never queued, so
/// nothing waits and nothing locks.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    cap: usize,
}

impl Budget {
    pub fn new(cap: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            cap,
        })
    }

    /// Takes `n` bytes if they fit.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= self.cap)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The error of a request that does not fit.
    fn refusal(&self, wanted: usize) -> Error {
        metrics::counter!("switchyard_inflight_bytes_refused_total").increment(1);
        Error::Overloaded(format!(
            "the server holds {} of its {} bytes of request budget and this request needs {wanted} more; retry later",
            self.used(),
            self.cap
        ))
    }
}

/// What one request holds of the [`Budget`]; given back when it is dropped,
/// once the request is answered.
#[derive(Debug)]
pub struct Hold<'a> {
    budget: &'a Budget,
    bytes: AtomicUsize,
}

impl<'a> Hold<'a> {
    pub fn new(budget: &'a Budget) -> Hold<'a> {
        Hold {
            budget,
            bytes: AtomicUsize::new(0),
        }
    }

    /// Takes `n` more bytes, or says why not.
    pub fn take(&self, n: usize) -> Result<(), Error> {
        if self.budget.take(n) {
            self.bytes.fetch_add(n, Ordering::Relaxed);
            Ok(())
        } else {
            Err(self.budget.refusal(n))
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.budget.give(*self.bytes.get_mut());
    }
}

/// Why a metered body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive within {0:?} (--body-timeout)")]
    Timeout(Duration),
    #[error("{0}")]
    Budget(Error),
    #[error("could not read the request body: {0}")]
    Read(Box<dyn std::error::Error + Send + Sync>),
}

impl From<BodyError> for Error {
    fn from(e: BodyError) -> Error {
        match e {
            BodyError::Timeout(_) => Error::RequestTimeout(e.to_string()),
            BodyError::Budget(e) => e,
            BodyError::Read(_) => Error::invalid(e.to_string()),
        }
    }
}

/// A deadline armed only when a read would wait: a body already in the
/// socket's buffer (most small requests) never touches the timer.
struct Deadline {
    at: Instant,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
            sleep: None,
        }
    }

    /// Ready once the deadline has passed.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
            .poll(cx)
    }
}

/// An HTTP request body read under the body timeout, its bytes taken from
/// the request's [`Hold`] as they arrive: nothing is allocated for a declared
/// `Content-Length` before its bytes come, so nothing is held for it either
/// (a client declaring much and sending little holds only what it sent).
pub struct Metered<'a, B> {
    inner: B,
    hold: &'a Hold<'a>,
    deadline: Deadline,
}

impl<'a, B> Metered<'a, B> {
    pub fn new(inner: B, hold: &'a Hold<'a>, timeout: Duration) -> Self {
        Metered {
            inner,
            hold,
            deadline: Deadline::new(timeout),
        }
    }
}

impl<B> Body for Metered<'_, B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.hold.take(data.len()).map_err(BodyError::Budget)?;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Read(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.deadline.poll_passed(cx));
                Poll::Ready(Some(Err(BodyError::Timeout(this.deadline.limit))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a gRPC request body is in its stream of length-prefixed messages.
enum Framing {
    /// A message was refused: the stream is over.
    Refused,
    /// Reading a 5-byte prefix: so many bytes of it seen.
    Prefix { seen: usize, len: [u8; 4] },
    /// Inside a message: so many bytes of it still to come.
    Message(usize),
}

/// A gRPC request body whose message length prefixes are checked as they pass,
/// before a reader (tonic, or the direct ModelInfer path) takes them: a
/// message over `--max-body-bytes` or past the in-flight budget ends the
/// stream with RESOURCE_EXHAUSTED before its declared length is reserved, and
/// a message that does not arrive within the body timeout ends it with
/// DEADLINE_EXCEEDED: a unary call's whole body (its end is awaited, so a
/// stream left open would hold a task and its message forever), a streaming
/// call's each message. A stream holds the budget of the message it is
/// reading, only.
pub struct GrpcMetered<B> {
    inner: B,
    budget: Arc<Budget>,
    held: usize,
    max_message: usize,
    timeout: Duration,
    framing: Framing,
    /// Set while a message is partly received, or for a unary call's whole body.
    deadline: Option<Deadline>,
    /// A unary call: the deadline runs from the start to the body's end.
    unary: bool,
}

impl<B> GrpcMetered<B> {
    /// `unary`: the call takes one message (every method but a stream's).
    pub fn new(
        inner: B,
        budget: Arc<Budget>,
        max_message: usize,
        timeout: Duration,
        unary: bool,
    ) -> Self {
        GrpcMetered {
            inner,
            budget,
            held: 0,
            max_message,
            timeout,
            framing: Framing::Prefix {
                seen: 0,
                len: [0; 4],
            },
            deadline: unary.then(|| Deadline::new(timeout)),
            unary,
        }
    }

    fn refuse(&mut self, status: tonic::Status) -> Result<(), tonic::Status> {
        self.framing = Framing::Refused;
        Err(status)
    }

    /// Follows the framing through `data`; refuses a message that cannot be held.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), tonic::Status> {
        while !data.is_empty() {
            match &mut self.framing {
                Framing::Refused => {
                    return Err(tonic::Status::resource_exhausted("the stream was refused"))
                }
                Framing::Message(left) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.framing = Framing::Prefix {
                            seen: 0,
                            len: [0; 4],
                        };
                        if !self.unary {
                            self.deadline = None;
                        }
                    }
                }
                Framing::Prefix { seen, len } => {
                    if *seen == 0 {
                        // The message before this one is with tonic by now.
                        self.budget.give(std::mem::take(&mut self.held));
                        if !self.unary {
                            self.deadline = Some(Deadline::new(self.timeout));
                        }
                    }
                    if *seen > 0 {
                        len[*seen - 1] = data[0];
                    }
                    *seen += 1;
                    data = &data[1..];
                    if *seen == 5 {
                        let n = u32::from_be_bytes(*len) as usize;
                        if n > self.max_message {
                            let max = self.max_message;
                            return self.refuse(tonic::Status::resource_exhausted(format!(
                                "message length {n} is over the limit of {max} bytes (--max-body-bytes)"
                            )));
                        }
                        if !self.budget.take(n) {
                            let e = self.budget.refusal(n);
                            return self.refuse(tonic::Status::resource_exhausted(e.to_string()));
                        }
                        self.held = n;
                        self.framing = if n == 0 {
                            if !self.unary {
                                self.deadline = None;
                            }
                            Framing::Prefix {
                                seen: 0,
                                len: [0; 4],
                            }
                        } else {
                            Framing::Message(n)
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

impl<B> Drop for GrpcMetered<B> {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

impl<B> Body for GrpcMetered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.scan(data.chunk())
                        .map_err(|s| Box::new(s) as Self::Error)?;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(d) = &mut this.deadline {
                    ready!(d.poll_passed(cx));
                    let limit = d.limit;
                    // Its bytes go back now: tonic may hold the body a while.
                    this.budget.give(std::mem::take(&mut this.held));
                    return Poll::Ready(Some(Err(Box::new(tonic::Status::deadline_exceeded(
                        format!(
                            "the request message did not arrive within {limit:?} (--body-timeout)"
                        ),
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn budget_refuses_past_its_cap_and_gets_bytes_back() {
        let b = Budget::new(100);
        let h = Hold::new(&b);
        h.take(60).unwrap();
        assert!(matches!(h.take(41), Err(Error::Overloaded(_))));
        h.take(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(h);
        assert_eq!(b.used(), 0);
    }

    fn frame(len: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn grpc_prefix_over_the_budget_is_refused_before_its_bytes() {
        let b = Budget::new(1000);
        let body = GrpcMetered::new(
            Full::new(Bytes::from(frame(0xFFFF_FFFF, b""))),
            b.clone(),
            usize::MAX,
            Duration::from_secs(5),
            true,
        );
        let e = body.collect().await.unwrap_err();
        let s = e.downcast::<tonic::Status>().unwrap();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s}");
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn grpc_messages_hold_the_budget_one_at_a_time() {
        let b = Budget::new(10);
        let mut bytes = frame(8, b"12345678");
        bytes.extend(frame(9, b"123456789"));
        // Split inside the second prefix.
        let (one, two) = bytes.split_at(15);
        let chunks = chunked(vec![one.to_vec(), two.to_vec()]);
        let mut body = GrpcMetered::new(chunks, b.clone(), 100, Duration::from_secs(5), false);
        while let Some(f) = body.frame().await {
            f.unwrap();
            assert!(b.used() <= 10);
        }
        assert_eq!(b.used(), 9);
        drop(body);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn grpc_message_over_the_size_limit_is_refused() {
        let b = Budget::new(1 << 20);
        let body = GrpcMetered::new(
            Full::new(Bytes::from(frame(101, b""))),
            b.clone(),
            100,
            Duration::from_secs(5),
            true,
        );
        let e = body.collect().await.unwrap_err();
        let s = e.downcast::<tonic::Status>().unwrap();
        assert!(s.message().contains("over the limit of 100"), "{s}");
    }

    type Chunks = http_body_util::StreamBody<
        tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    /// A body of these chunks, one frame each.
    fn chunked(chunks: Vec<Vec<u8>>) -> Chunks {
        let frames: Vec<_> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        http_body_util::StreamBody::new(tokio_stream::iter(frames))
    }
}
