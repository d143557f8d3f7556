//! The accept loop both front ends share: HTTP/1.1 and HTTP/2 (h2c) connections on
//! a listener, one service per connection, each connection watched for the
//! header and idle deadlines, a cap on open connections, and a graceful stop.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use super::limits::{Bounds, Limits};
use crate::core::tasks::Scope;

/// How long open connections may take to finish when a stop comes with no
/// budget of its own.
const DRAIN: Duration = Duration::from_secs(10);
/// Taken off the stop's budget for the drain, so that connections still open
/// are closed, and their tasks gone, before the edge's own deadline.
const DRAIN_MARGIN: Duration = Duration::from_millis(500);

/// What a connection's service is: one per connection, its futures sent to
/// hyper's tasks.
pub(super) trait ConnService<B>:
    Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    > + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Send
        + 'static
{
}

/// What the body of an answer is.
pub(super) trait AnswerBody:
    Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> AnswerBody for B where
    B: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

/// Serves connections from `listener` until `scope` is cancelled, each on a
/// task of that scope, over TLS when `tls` is given; `service` makes the
/// service of one connection from its peer's address.
pub async fn serve<S, B, F>(
    listener: TcpListener,
    service: F,
    bounds: &Bounds,
    tls: Option<TlsAcceptor>,
    scope: Scope,
) where
    F: Fn(SocketAddr) -> S,
    S: ConnService<B>,
    B: AnswerBody,
{
    let (limits, connections) = (&bounds.limits, &bounds.connections);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header deadline is the watchdog's (below), which also covers the
    // bytes that decide HTTP/1.1 or h2 and does not cut keep-alive short.
    builder.http1().header_read_timeout(None).max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Envoy's edge guidance; a client needing more opens a connection.
        .max_concurrent_streams(100)
        .max_header_list_size(16 << 10)
        // Finds peers that vanished without a FIN while streams are open.
        .keep_alive_interval(Some(limits.idle_timeout.min(Duration::from_secs(30))))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    // The graceful stop: every connection task holds a receiver; a send asks
    // them to finish, and the sender sees them all gone when they have.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let shutdown = scope.token().clone().cancelled_owned();
    tokio::pin!(shutdown);
    // Past the drain, what is still open is aborted: dropping a connection's
    // future closes its socket and ends its streams. Abort handles, owned by
    // this loop alone, rather than a token each connection polls: a shared
    // token is a shared lock on every poll of every connection.
    let mut open: Vec<tokio::task::AbortHandle> = Vec::new();
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
        let Some(opened) = connections.open() else {
            // Closing at once frees the descriptor; the connections already
            // open keep being served.
            metrics::counter!("switchyard_connections_refused_total").increment(1);
            tracing::debug!(%peer, max = connections.max(), "connection refused: --max-connections reached");
            drop(stream);
            continue;
        };
        let run = connection(&builder, stream, peer, service(peer), limits, tls.clone());
        let watch = stopped.clone();
        let task = scope.spawn(async move {
            run.serve(watch).await;
            drop(opened);
        });
        if open.len() == open.capacity() {
            open.retain(|h| !h.is_finished());
        }
        open.push(task.abort_handle());
    }
    // Connections the kernel completed before the close wait in its backlog
    // with their request sent: closing the listener would reset them. The
    // backlog is shrunk first (new handshakes are no longer completed, so
    // their clients see a refusal, not a reset after sending), then what it
    // holds is served; their answer says `connection: close`, and the
    // drain's deadline bounds them.
    if let Err(e) = socket2::SockRef::from(&listener).listen(0) {
        tracing::debug!(error = %e, "cannot shrink the listener's backlog");
    }
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await
    {
        let opened = connections.open();
        let run = connection(&builder, stream, peer, service(peer), limits, tls.clone());
        let watch = stopped.clone();
        let task = scope.spawn(async move {
            run.serve(watch).await;
            drop(opened);
        });
        open.push(task.abort_handle());
    }
    drop(listener);
    drop(stopped);
    // h2 connections get GOAWAY, HTTP/1.1 ones close after the answer they owe.
    let _ = stop.send(());
    let drain = bounds
        .stopping
        .left()
        .map_or(DRAIN, |left| left.saturating_sub(DRAIN_MARGIN));
    if tokio::time::timeout(drain, stop.closed()).await.is_err() {
        let still = open.iter().filter(|h| !h.is_finished()).count();
        tracing::warn!(
            connections = still,
            "connections still open when the stop's budget ran out; closing them"
        );
        open.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// One accepted connection, to be served on its own task.
fn connection<S>(
    builder: &Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    limits: &Limits,
    tls: Option<TlsAcceptor>,
) -> Connection<S> {
    let _ = stream.set_nodelay(true);
    Connection {
        builder: builder.clone(),
        stream,
        peer,
        service,
        state: Arc::new(ConnState::new()),
        limits: limits.clone(),
        tls,
    }
}

/// An accepted connection: its TLS handshake (within the header deadline,
/// counted from the accept), then HTTP/1.1 or h2 over the watched socket.
struct Connection<S> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    state: Arc<ConnState>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
}

impl<S> Connection<S> {
    /// Serves the connection until it ends; a change on `stop` asks it to
    /// finish gracefully.
    async fn serve<B>(self, stop: watch::Receiver<()>)
    where
        S: ConnService<B>,
        B: AnswerBody,
    {
        let Connection {
            builder,
            stream,
            peer,
            service,
            state,
            limits,
            tls,
        } = self;
        let Some(acceptor) = tls else {
            return http(
                &builder,
                Watched::new(stream, state, &limits),
                service,
                peer,
                stop,
            )
            .await;
        };
        let deadline = state.accepted + limits.header_timeout;
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                http(
                    &builder,
                    Watched::new(tls, state, &limits),
                    service,
                    peer,
                    stop,
                )
                .await
            }
            Ok(Err(e)) => {
                metrics::counter!("switchyard_tls_handshake_failures_total").increment(1);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                metrics::counter!("switchyard_connections_timed_out_total", "reason" => "handshake")
                    .increment(1);
                tracing::debug!(%peer, "TLS handshake not done within the header timeout");
            }
        }
    }
}

/// HTTP/1.1 or h2 (as the first bytes say) over `io`, the requests counted.
async fn http<T, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: Watched<T>,
    service: S,
    peer: SocketAddr,
    stop: watch::Receiver<()>,
) where
    T: Socket,
    S: ConnService<B>,
    B: AnswerBody,
{
    let state = io.state.clone();
    let svc = Counted {
        inner: service,
        state: state.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut stop = stop;
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop.changed() => {
            // hyper closes an HTTP/1.1 connection that has not read its
            // first request at once, losing a request the client is sending:
            // let it arrive (the header deadline bounds the wait). A socket
            // that sent nothing, or h2 (GOAWAY has no such race), is asked
            // at once.
            while state.started.load(Ordering::Acquire) == 0
                && state.http1_bytes.load(Ordering::Relaxed)
            {
                tokio::select! {
                    ended = conn.as_mut() => return log_end(peer, ended),
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    log_end(peer, ended);
}

fn log_end(peer: SocketAddr, ended: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// What a connection's requests tell its watchdog. One per connection, so
/// its atomics are shared only by that connection's tasks.
struct ConnState {
    accepted: Instant,
    /// Requests started (heads received).
    started: AtomicU64,
    /// Requests whose answer has not been sent yet.
    active: AtomicU32,
    /// When the last answer was sent, in ms after `accepted`.
    last_done_ms: AtomicU64,
    /// HTTP/1.1 bytes have arrived (a head may be under way).
    http1_bytes: AtomicBool,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            accepted: Instant::now(),
            started: AtomicU64::new(0),
            active: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
            http1_bytes: AtomicBool::new(false),
        }
    }
}

/// Counts a connection's requests in and out for its watchdog.
struct Counted<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Answer<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        self.state.started.fetch_add(1, Ordering::Release);
        CountedFuture {
            inner: self.inner.call(req),
            active: Some(Active::new(self.state.clone())),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer being made; the request stays active in its body.
    struct CountedFuture<F> {
        #[pin]
        inner: F,
        active: Option<Active>,
    }
}

impl<F, B, E> std::future::Future for CountedFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Answer<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx))?;
        let active = this.active.take();
        Poll::Ready(Ok(resp.map(|body| Answer { body, active })))
    }
}

/// A request counted as active until its answer has been given its last
/// frame, or is dropped (the connection gone): an h2 stream or a streamed
/// answer stays active for as long as it is being written. Released as the
/// last frame is taken, not when the body is dropped, because the HTTP/1.1
/// connection looks at its deadline right after writing, maybe before the drop.
struct Active {
    state: Arc<ConnState>,
    released: AtomicBool,
}

impl Active {
    fn new(state: Arc<ConnState>) -> Active {
        Active {
            state,
            released: AtomicBool::new(false),
        }
    }

    fn release(&self) {
        if !self.released.swap(true, Ordering::Relaxed) {
            let s = &self.state;
            let ms = s.accepted.elapsed().as_millis() as u64;
            // h2 streams end on their own tasks: the latest end wins, and is
            // visible to the watchdog before the count it reads.
            s.last_done_ms.fetch_max(ms, Ordering::Relaxed);
            s.active.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.release();
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, carrying its request's [`Active`] mark.
    pub struct Answer<B> {
        #[pin]
        body: B,
        active: Option<Active>,
    }
}

impl<B: Body> Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.body.as_mut().poll_frame(cx));
        if frame.is_none() || this.body.is_end_stream() {
            if let Some(a) = this.active {
                a.release();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let end = self.body.is_end_stream();
        if end {
            if let Some(a) = &self.active {
                a.release();
            }
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why the watchdog closes a connection.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expiry {
    /// No complete request head in time.
    Head,
    /// Nothing in flight for the idle timeout.
    Idle,
}

/// A connection's transport: TCP, or TLS over it.
pub(super) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes `bytes` if the socket takes them at once, else nothing: the
    /// watchdog's last word to a client it closes.
    fn write_now(&self, bytes: &[u8]);
}

impl Socket for TcpStream {
    fn write_now(&self, bytes: &[u8]) {
        let _ = self.try_write(bytes);
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    /// A record would need the TLS state, which is busy: the client only
    /// sees the close.
    fn write_now(&self, _: &[u8]) {}
}

/// An HTTP/1.1 client that sent part of a head gets this before the close.
const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 78\r\n\r\n{\"error\":\"the request head did not arrive within the header timeout (--header-timeout)\"}";

/// A connection's socket, with its watchdog: while the connection waits to
/// read and nothing is in flight, a read that would wait also polls a timer
/// for the header or idle deadline, and past it the read fails, which ends
/// the connection. Nothing runs on a connection that is busy or has data.
struct Watched<T> {
    io: T,
    state: Arc<ConnState>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// The first bytes the client sent (up to 3): `PRI` starts h2's preface.
    first: [u8; 3],
    first_len: usize,
    /// A write is waiting for the client to read: the connection is busy.
    writing: bool,
    /// When bytes of a next request head arrived on an idle HTTP/1.1
    /// connection, and how many requests had started then.
    head_since: Option<(Instant, u64)>,
    timer: Pin<Box<Sleep>>,
    /// When the timer fires.
    armed: Instant,
}

impl<T: Socket> Watched<T> {
    fn new(io: T, state: Arc<ConnState>, limits: &Limits) -> Watched<T> {
        let first_deadline = state.accepted + limits.header_timeout;
        Watched {
            io,
            state,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            first: [0; 3],
            first_len: 0,
            writing: false,
            head_since: None,
            timer: Box::pin(tokio::time::sleep_until(first_deadline)),
            armed: first_deadline,
        }
    }

    fn is_h2(&self) -> bool {
        self.first_len == 3 && &self.first == b"PRI"
    }

    /// The deadline the connection is under now, if any.
    fn deadline(&mut self) -> Option<(Instant, Expiry)> {
        let s = &self.state;
        if self.writing || s.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let started = s.started.load(Ordering::Acquire);
        if started == 0 {
            return Some((s.accepted + self.header_timeout, Expiry::Head));
        }
        match self.head_since {
            Some((t, n)) if n == started => return Some((t + self.header_timeout, Expiry::Head)),
            Some(_) => self.head_since = None,
            None => {}
        }
        let idle_since = s.accepted + Duration::from_millis(s.last_done_ms.load(Ordering::Relaxed));
        Some((idle_since + self.idle_timeout, Expiry::Idle))
    }

    /// Notes what the bytes just read say about the connection.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.first_len < 3 {
            let n = bytes.len().min(3 - self.first_len);
            self.first[self.first_len..self.first_len + n].copy_from_slice(&bytes[..n]);
            let was = self.first_len;
            self.first_len += n;
            if was == 0 {
                // Until the preface says h2, bytes are taken for HTTP/1.1's.
                self.state.http1_bytes.store(true, Ordering::Relaxed);
            }
            if self.is_h2() {
                self.state.http1_bytes.store(false, Ordering::Relaxed);
            }
        }
        // h2 frames arrive on idle connections (PING, WINDOW_UPDATE): only
        // HTTP/1.1 bytes between requests are the start of a head.
        if self.head_since.is_none() && !self.is_h2() {
            let s = &self.state;
            let started = s.started.load(Ordering::Relaxed);
            if started > 0 && s.active.load(Ordering::Relaxed) == 0 {
                self.head_since = Some((Instant::now(), started));
            }
        }
    }

    /// Polls the deadline of a read that would wait: an error once it passed.
    /// The timer stays armed no later than any deadline that can apply (also
    /// while a request is in flight, when none does), so that a connection
    /// turning idle needs no wake-up of its own; firing early only means
    /// looking again.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        loop {
            let due = self.deadline();
            // While a request is in flight, the connection may turn idle
            // without a read: be armed for the soonest deadline it could get.
            let soonest = match due {
                Some((at, _)) => at,
                None => Instant::now() + self.header_timeout.min(self.idle_timeout),
            };
            if soonest < self.armed {
                self.arm(soonest);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            match due {
                Some((at, why)) if at <= now => return Poll::Ready(self.expire(why)),
                Some((at, _)) => self.arm(at),
                // No deadline can come sooner than this.
                None => self.arm(now + self.header_timeout.min(self.idle_timeout)),
            }
        }
    }

    fn arm(&mut self, at: Instant) {
        self.timer.as_mut().reset(at);
        self.armed = at;
    }

    fn expire(&mut self, why: Expiry) -> std::io::Error {
        let reason = match why {
            Expiry::Head => "header",
            Expiry::Idle => "idle",
        };
        metrics::counter!("switchyard_connections_timed_out_total", "reason" => reason)
            .increment(1);
        // A client in the middle of an HTTP/1.1 head hears why; best effort,
        // the socket's buffer takes it or the client never learns.
        let mid_head = self.first_len > 0
            && !self.is_h2()
            && (self.state.started.load(Ordering::Relaxed) == 0 || self.head_since.is_some());
        if why == Expiry::Head && mid_head {
            self.io.write_now(TIMEOUT_408);
        }
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connection closed: {reason} timeout"),
        )
    }
}

impl<T: Socket> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = &buf.filled()[before..];
                if this.first_len < 3 || this.head_since.is_none() {
                    this.saw(filled);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl<T: Socket> AsyncWrite for Watched<T> {
    // A client slow to read a large answer keeps the connection busy: no
    // idle deadline while a write waits on it.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.writing = r.is_pending();
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.writing = r.is_pending();
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
