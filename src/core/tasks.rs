//! The task tree: every long-lived thread and task of the server starts in a
//! [`Scope`] of the one [`Supervisor`], which can cancel it and wait for it
//! with a deadline. The layers stop top-down: the edge (listeners, then open
//! connections), the control plane, the serving layer (workers finish what
//! they hold; each owns its runtime sessions, which go with it).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One layer's threads and tasks: a token they watch, and a count of those
/// still running. Cloning gives another handle on the same scope.
#[derive(Clone)]
pub struct Scope {
    name: &'static str,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Scope {
    pub fn new(name: &'static str) -> Self {
        Scope {
            name,
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Cancelled when the scope is asked to stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Starts a named thread, counted until `f` returns; `f` should return
    /// soon after [`Scope::token`] is cancelled, or once its work is gone.
    pub fn spawn_thread(
        &self,
        name: String,
        f: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let counted = self.tracker.token();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let _counted = counted;
                f()
            })
            .map(|_| ())
    }

    /// Starts a task on the current async runtime, counted until it ends.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Threads and tasks of this scope still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Cancels the scope and waits up to `deadline` for all it started to
    /// end; returns how many have not (logged: what they hold stays).
    pub async fn stop(&self, deadline: Duration) -> usize {
        self.token.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(deadline, self.tracker.wait()).await;
        let left = self.tracker.len();
        if ended.is_ok() {
            tracing::info!(layer = self.name, "stopped");
        } else {
            tracing::warn!(
                layer = self.name,
                running = left,
                "threads or tasks still running {} s after the stop; not waited for",
                deadline.as_secs()
            );
        }
        left
    }
}

/// Whether the server has been asked to stop, and the one deadline by which
/// all of it must have: readiness turns 503 from the moment it is set, and
/// every stage of the stop takes what is left of the same budget.
#[derive(Debug, Default)]
pub struct Stopping {
    deadline: OnceLock<Instant>,
}

impl Stopping {
    /// Starts the stop with `budget`, once; returns the deadline.
    pub fn begin(&self, budget: Duration) -> Instant {
        *self.deadline.get_or_init(|| Instant::now() + budget)
    }

    pub fn is_stopping(&self) -> bool {
        self.deadline.get().is_some()
    }

    /// What is left of the budget (none before the stop began).
    pub fn left(&self) -> Option<Duration> {
        self.deadline
            .get()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// The server's scopes, one per layer that starts threads or tasks. The
/// runtime layer starts none of its own: each worker thread owns its
/// sessions, so they end with the serving scope.
#[derive(Clone)]
pub struct Supervisor {
    pub edge: Scope,
    pub control: Scope,
    pub serving: Scope,
    /// The span exporter: stopped last, it sends the spans of all before it.
    pub telemetry: Scope,
    pub stopping: Arc<Stopping>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            edge: Scope::new("edge"),
            control: Scope::new("control"),
            serving: Scope::new("serving"),
            telemetry: Scope::new("telemetry"),
            stopping: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_cancels_and_waits_for_threads_and_tasks() {
        let scope = Scope::new("test");
        let token = scope.token().clone();
        scope
            .spawn_thread("t".into(), move || {
                while !token.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .unwrap();
        let token = scope.token().clone();
        scope.spawn(async move { token.cancelled().await });
        assert_eq!(scope.running(), 2);
        assert_eq!(scope.stop(Duration::from_secs(5)).await, 0);
    }

    #[tokio::test]
    async fn one_that_does_not_stop_is_counted_not_waited_for() {
        let scope = Scope::new("test");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        scope
            .spawn_thread("stuck".into(), move || {
                let _ = rx.recv();
            })
            .unwrap();
        assert_eq!(scope.stop(Duration::from_millis(50)).await, 1);
        drop(tx);
    }
}
