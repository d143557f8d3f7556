//! The accept loop both front ends share: HTTP/1.1 and HTTP/2 (h2c) connections on
//! a listener, one service per connection, and a graceful stop.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::core::tasks::Scope;

/// How long open connections may take to finish once a stop is asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves connections from `listener` until `scope` is cancelled, each on a
/// task of that scope; `service` makes the service of one connection from its
/// peer's address.
pub async fn serve<S, B, F>(listener: TcpListener, service: F, scope: Scope)
where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service(peer));
        let conn = graceful.watch(conn.into_owned());
        let task = scope.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        if open.len() == open.capacity() {
            open.retain(|h| !h.is_finished());
        }
        open.push(task.abort_handle());
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
        open.iter().for_each(tokio::task::AbortHandle::abort);
    }
}
