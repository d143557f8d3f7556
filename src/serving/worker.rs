//! The bounded queue of one model version and the worker threads that drain it,
//! batching what is queued.
//!
//! A free worker takes the next job and, for a batching model, everything else
//! already queued that fits (up to `max_batch_size` rows, same dims past the batch
//! dim, same outputs): an idle server adds no delay, and requests that arrive
//! while the workers are busy form the next batch. With `max_queue_delay` it also
//! waits that long for a fuller batch; with preferred batch sizes it sends the
//! largest of them it can form. Jobs whose client went away are dropped here,
//! before compute.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Stats, TensorSpec};
use crate::core::batch;
use crate::core::error::{Error, Result};
use crate::core::tasks::Scope;
use crate::core::tensor::Tensor;
use crate::core::trace::{KeyValue, Trace};
use crate::runtime::Backend;

/// One queued request: validated inputs, the outputs to return, and where to answer.
pub struct Job {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
    pub reply: oneshot::Sender<Result<Vec<Tensor>>>,
    pub enqueued: Instant,
    /// Past this, the job is answered DEADLINE_EXCEEDED instead of computed.
    pub deadline: Option<Instant>,
    /// Set when the request is traced: its queue, batch and compute become spans.
    pub trace: Option<Trace>,
}

impl Job {
    /// Whether the job should still be computed; answers it if not.
    fn live(self) -> Option<Job> {
        if self.reply.is_closed() {
            return None;
        }
        match self.deadline {
            Some(d) if Instant::now() > d => {
                let waited = self.enqueued.elapsed();
                let _ = self.reply.send(Err(Error::DeadlineExceeded(format!(
                    "the request's deadline passed after {waited:?} in the queue; it was not computed"
                ))));
                None
            }
            _ => Some(self),
        }
    }

    fn rows(&self) -> usize {
        batch::rows_of(&self.inputs)
    }
}

/// How a version's workers form batches.
#[derive(Debug, Clone, Default)]
pub struct BatchPolicy {
    /// Rows per run at most; 0: the model has no batch dim, one request per run.
    pub max_batch_size: usize,
    /// How long a worker holding a partial batch waits for more; zero: not at all.
    pub max_queue_delay: Duration,
    /// Queues by priority (Triton's `priority_levels`); 0 or 1: one queue.
    pub priority_levels: usize,
    /// Batch sizes (rows) to prefer; empty: any size up to `max_batch_size`.
    pub preferred: Vec<usize>,
    /// The outputs the model declares: a batched run's outputs are checked
    /// against them before they are split by rows. Empty: not checked.
    pub outputs: Vec<TensorSpec>,
    /// A request this model computes within this time (by the mean of its
    /// runs of as many rows) may run on the caller's thread; zero: never.
    /// See [`Workers::try_inline`].
    pub inline_budget: Duration,
}

impl BatchPolicy {
    fn preferred(&self, rows: usize) -> bool {
        self.preferred.contains(&rows)
    }

    fn inline_budget_ns(&self) -> u64 {
        u64::try_from(self.inline_budget.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One backend instance. Its worker holds the lock while it runs a batch and
/// only then; a caller running a job inline takes it with `try_lock`, never
/// waiting, so the lock is uncontended on both paths.
type Instance = std::sync::Mutex<Box<dyn Backend>>;

/// What a run needs besides the backend, shared by the workers and inline runs.
struct Runner {
    policy: BatchPolicy,
    stats: Arc<Stats>,
    check: OutputCheck,
}

/// The queue and worker threads of one model version. Dropping it closes the
/// queue; the workers finish what is queued, then exit and drop their sessions.
pub struct Workers {
    /// One queue per priority level, highest first.
    tx: Vec<Sender<Job>>,
    capacity: usize,
    instances: Arc<[Instance]>,
    runner: Arc<Runner>,
    /// When the latest request came, in ns since `epoch`, and the mean gap
    /// between requests (a moving average over about 8), to tell a crowd.
    last_arrival: AtomicU64,
    mean_gap: AtomicU64,
    epoch: Instant,
    /// Where the worker threads run: the serving layer's scope of the task tree.
    scope: Scope,
    /// Threads still running; outlives the version, so that a retired one can
    /// be watched until its last worker has exited.
    alive: Arc<AtomicUsize>,
}

/// Counts a worker thread as alive until it returns (or unwinds).
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Release);
    }
}

impl Workers {
    /// Starts one thread per backend instance, all draining the same queues (one
    /// per priority level, `capacity` jobs each). An idle worker polls the queues
    /// for `idle_spin` before it sleeps.
    pub fn spawn(
        scope: &Scope,
        label: &str,
        instances: Vec<Box<dyn Backend>>,
        capacity: usize,
        idle_spin: impl Into<Spin>,
        policy: BatchPolicy,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        let idle_spin = idle_spin.into();
        let (tx, rx): (Vec<_>, Vec<_>) = (0..policy.priority_levels.max(1))
            .map(|_| crossbeam_channel::bounded(capacity))
            .unzip();
        let rx = Queues(rx);
        let alive = Arc::new(AtomicUsize::new(0));
        let runner = Arc::new(Runner {
            policy,
            stats,
            check: OutputCheck {
                label: label.to_string(),
                logged: Default::default(),
            },
        });
        let instances: Arc<[Instance]> = instances.into_iter().map(Instance::new).collect();
        let quiet = runner.policy.inline_budget_ns().saturating_mul(4);
        for i in 0..instances.len() {
            let rx = rx.clone();
            let runner = runner.clone();
            let instances = instances.clone();
            alive.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let counted = Alive(alive.clone());
            scope
                .spawn_thread(format!("{label}#{i}"), move || {
                    let _counted = counted;
                    run(&instances[i], rx, idle_spin, &runner)
                })
                .map_err(|e| Error::load(format!("cannot start worker thread: {e}")))?;
        }
        Ok(Workers {
            tx,
            capacity,
            instances,
            runner,
            last_arrival: AtomicU64::new(0),
            // Quiet at start: the first request may run inline.
            mean_gap: AtomicU64::new(quiet),
            epoch: Instant::now(),
            scope: scope.clone(),
            alive,
        })
    }

    /// Runs `job` on the calling thread, or gives it back to be queued.
    ///
    /// Handing a job to a sleeping worker and its answer back costs two thread
    /// wake-ups, which for a small model is several times its compute
    /// (mlp_small, one core: ~100 µs of CPU a request at 1k/s, ORT's share 10 µs).
    /// So a request runs where it was decoded when nothing would be gained by
    /// queueing it: no request waits ahead of it, requests are not coming as
    /// a crowd (which batches), an instance is free this instant, no batching
    /// delay is configured, and the model's runs of as many rows took at most
    /// `inline_budget` on average. The budget is what keeps inference off the
    /// async threads in the sense that matters: a run that short blocks an I/O
    /// thread no longer than decoding a modest JSON body does, and anything
    /// longer, or unmeasured yet, goes to the workers.
    pub fn try_inline(&self, job: Job) -> std::result::Result<(), Job> {
        let policy = &self.runner.policy;
        if policy.inline_budget.is_zero()
            || !policy.max_queue_delay.is_zero()
            || !policy.preferred.is_empty()
        {
            return Err(job);
        }
        // A crowd must queue even when the queue is empty: with one I/O thread,
        // requests running inline one after another would never batch (mlp_small,
        // HTTP, one core, c=64: 41.7k → 14.4k requests/s). Requests that have
        // been coming less than twice the budget apart on average are a crowd,
        // and so is one received while others are (the streams of an HTTP/2
        // connection). Gaps count up to four budgets, so that the first few
        // requests of a burst after a quiet spell already see it.
        let budget = policy.inline_budget_ns();
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let gap = now
            .saturating_sub(self.last_arrival.swap(now, Ordering::Relaxed))
            .min(budget.saturating_mul(4));
        let mean = self.mean_gap.load(Ordering::Relaxed);
        let mean = mean - mean / 8 + gap / 8;
        self.mean_gap.store(mean, Ordering::Relaxed);
        if mean < budget.saturating_mul(2)
            || crate::core::request::others_received()
            || self.queue_depth() > 0
        {
            return Err(job);
        }
        let rows = if policy.max_batch_size > 0 {
            job.rows()
        } else {
            1
        };
        match self.runner.stats.mean_run(rows) {
            Some(mean) if mean <= policy.inline_budget => {}
            _ => return Err(job),
        }
        for instance in self.instances.iter() {
            let mut backend = match instance.try_lock() {
                Ok(b) => b,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            execute(backend.as_mut(), vec![job], &self.runner);
            return Ok(());
        }
        Err(job)
    }

    /// Queues a job at a priority level (0 is the highest) without waiting; a full
    /// queue is refused at once.
    pub fn submit(&self, job: Job, level: usize, model: &str, version: u64) -> Result<()> {
        let tx = &self.tx[level.min(self.tx.len() - 1)];
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Error::QueueFull {
                model: model.to_string(),
                version,
                capacity: self.capacity,
            },
            TrySendError::Disconnected(_) => Error::Unavailable(format!(
                "model '{model}' version {version} is shutting down"
            )),
        })
    }

    pub fn queue_depth(&self) -> usize {
        self.tx.iter().map(Sender::len).sum()
    }

    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    /// The count of worker threads still running, which outlives these workers.
    pub fn alive(&self) -> Arc<AtomicUsize> {
        self.alive.clone()
    }

    /// The scope the worker threads run in; tasks on behalf of this version
    /// (a shadow copy) start there too.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
}

/// The queues of one version, read highest priority first.
#[derive(Clone)]
struct Queues(Vec<Receiver<Job>>);

impl Queues {
    fn try_recv(&self) -> std::result::Result<Job, crossbeam_channel::TryRecvError> {
        let mut open = false;
        for q in &self.0 {
            match q.try_recv() {
                Ok(j) => return Ok(j),
                Err(crossbeam_channel::TryRecvError::Empty) => open = true,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {}
            }
        }
        Err(if open {
            crossbeam_channel::TryRecvError::Empty
        } else {
            crossbeam_channel::TryRecvError::Disconnected
        })
    }

    /// Waits for a job, up to `timeout` if given; `None` when the time ran out or
    /// every queue is closed.
    fn recv(&self, timeout: Option<Duration>) -> Option<Job> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.try_recv() {
                Ok(j) => return Some(j),
                Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            let mut sel = crossbeam_channel::Select::new();
            for q in &self.0 {
                sel.recv(q);
            }
            // Wait for readiness only: the job is then taken highest priority first.
            match deadline {
                None => {
                    sel.ready();
                }
                Some(d) => {
                    sel.ready_deadline(d).ok()?;
                }
            }
        }
    }
}

/// How an idle worker waits for its next job: it polls its queue for `wait`,
/// only while jobs come that close together when `adaptive`, else always.
#[derive(Debug, Clone, Copy)]
pub struct Spin {
    pub wait: Duration,
    pub adaptive: bool,
}

impl From<Duration> for Spin {
    fn from(wait: Duration) -> Spin {
        Spin {
            wait,
            adaptive: true,
        }
    }
}

/// Takes the next job. Waking a sleeping thread costs tens of microseconds on a
/// virtual machine (and its caches go cold), so a worker that has just answered
/// keeps polling for `spin` first, yielding its core to any thread that needs it
/// (mlp_small, HTTP, concurrency 1: p50 84 → 32 µs). But only while jobs come
/// that close together: `gap` is how long the last one took to come, and when it
/// was longer than `spin` the worker sleeps at once. Spinning for jobs
/// that then come too late doubled the server's CPU per request at 1k-5k
/// requests/s for no gain in latency.
fn next_job(rx: &Queues, spin: Spin, gap: &mut Duration) -> Option<Job> {
    let start = Instant::now();
    let spin = if !spin.adaptive || *gap <= spin.wait {
        spin.wait
    } else {
        Duration::ZERO
    };
    let job = loop {
        match rx.try_recv() {
            Ok(job) => break Some(job),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        if start.elapsed() >= spin {
            break rx.recv(None);
        }
        std::thread::yield_now();
    };
    *gap = start.elapsed();
    job
}

fn run(instance: &Instance, rx: Queues, idle_spin: Spin, runner: &Runner) {
    let policy = &runner.policy;
    // Jobs taken from the queue that did not fit a batch: they start the next ones,
    // in their order.
    let mut carry: VecDeque<Job> = VecDeque::new();
    let mut gap = Duration::ZERO;
    loop {
        let first = match carry.pop_front() {
            Some(j) => j,
            None => match next_job(&rx, idle_spin, &mut gap) {
                Some(j) => j,
                None => return,
            },
        };
        // The client went away or the deadline passed while queued: no compute.
        let Some(first) = first.live() else {
            continue;
        };
        let mut batch = vec![first];
        if policy.max_batch_size > 0 {
            fill(&mut batch, &mut carry, &rx, policy);
        }
        let mut backend = instance.lock().unwrap_or_else(|p| p.into_inner());
        execute(backend.as_mut(), batch, runner);
    }
}

/// Whether `next` can join `batch`, which holds `rows` rows.
fn fits(batch: &[Job], rows: usize, next: &Job, policy: &BatchPolicy) -> bool {
    let first = &batch[0];
    rows + next.rows() <= policy.max_batch_size
        && batch::compatible(
            (&first.inputs, &first.outputs),
            (&next.inputs, &next.outputs),
        )
}

/// Adds carried, then queued jobs to `batch` while they fit; jobs taken that do
/// not fit go to `carry`.
fn fill(batch: &mut Vec<Job>, carry: &mut VecDeque<Job>, rx: &Queues, policy: &BatchPolicy) {
    let mut rows = batch[0].rows();
    for _ in 0..carry.len() {
        let Some(next) = carry.pop_front().and_then(Job::live) else {
            continue;
        };
        if fits(batch, rows, &next, policy) {
            rows += next.rows();
            batch.push(next);
        } else {
            carry.push_back(next);
        }
    }
    // Jobs in the batch when it last held a preferred size.
    let mut at_preferred = policy.preferred(rows).then_some(batch.len());
    let deadline = Instant::now() + policy.max_queue_delay;
    while rows < policy.max_batch_size {
        let next = match rx.try_recv() {
            Ok(j) => j,
            Err(crossbeam_channel::TryRecvError::Disconnected) => break,
            Err(crossbeam_channel::TryRecvError::Empty) => {
                // A preferred size ends the wait for a fuller batch.
                let now = Instant::now();
                if policy.preferred(rows) || now >= deadline {
                    break;
                }
                match rx.recv(Some(deadline - now)) {
                    Some(j) => j,
                    None => break,
                }
            }
        };
        let Some(next) = next.live() else {
            continue;
        };
        if !fits(batch, rows, &next, policy) {
            carry.push_back(next);
            break;
        }
        rows += next.rows();
        batch.push(next);
        if policy.preferred(rows) {
            at_preferred = Some(batch.len());
        }
    }
    // As Triton: send the largest preferred size formed; the rest starts the next batch.
    if !policy.preferred.is_empty() && !policy.preferred(rows) {
        if let Some(n) = at_preferred {
            for j in batch.drain(n..).rev() {
                carry.push_front(j);
            }
        }
    }
}

/// Where a batched run's outputs are checked, and whether a mismatch was logged.
struct OutputCheck {
    /// `model/version`, for the error and the log.
    label: String,
    logged: std::sync::atomic::AtomicBool,
}

impl OutputCheck {
    /// A batched run's outputs must have the declared rank, the batch's rows at
    /// dim 0 and the declared fixed dims after it: otherwise its rows cannot be
    /// told apart, and splitting them would hand one client another's values.
    /// As Triton refuses an output that disagrees with its configuration, the
    /// run fails (500, logged once per version).
    fn batched(&self, declared: &[TensorSpec], outputs: &[Tensor], rows: usize) -> Result<()> {
        for t in outputs {
            let Some(spec) = declared.iter().find(|s| s.name == t.name) else {
                continue;
            };
            let fits = t.shape.len() == spec.shape.len()
                && t.shape.first() == Some(&(rows as i64))
                && spec.shape[1..]
                    .iter()
                    .zip(&t.shape[1..])
                    .all(|(&want, &got)| want < 0 || want == got);
            if !fits {
                let e = format!(
                    "model {}: output '{}' of a batched run of {rows} rows came back with shape {:?}, but the model declares {:?}; its rows cannot be split between the requests, so none of them is answered with it (set max_batch_size = 0 in config.toml if the model has no batch dimension)",
                    self.label, t.name, t.shape, spec.shape
                );
                if !self.logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::error!("{e}");
                }
                return Err(Error::Internal(e));
            }
        }
        Ok(())
    }
}

/// Runs one batch and answers every job in it.
fn execute(backend: &mut dyn Backend, batch: Vec<Job>, runner: &Runner) {
    let Runner {
        policy,
        stats,
        check,
    } = runner;
    let started = Instant::now();
    let exporting = stats.exporting();
    for j in &batch {
        stats.queue.record(started - j.enqueued);
        if exporting {
            stats
                .metrics
                .queue
                .record((started - j.enqueued).as_secs_f64());
        }
    }
    // Taken before the jobs go with their answers; spans are made after them.
    let traced: Vec<(Trace, Instant)> = if batch.iter().any(|j| j.trace.is_some()) {
        batch
            .iter()
            .filter_map(|j| Some((j.trace.clone()?, j.enqueued)))
            .collect()
    } else {
        Vec::new()
    };
    // Counted only for a traced batch: an untraced one pays nothing here.
    let shape =
        (!traced.is_empty()).then(|| (batch.len(), batch.iter().map(Job::rows).sum::<usize>()));
    let compute = answer(backend, batch, policy, stats, check);
    if let Some(shape) = shape {
        trace_batch(&traced, shape, started, compute);
    }
}

/// The spans of a batch's traced requests: each one's wait in the queue, and
/// the batch (its size, links to the other traced requests in it) with the
/// compute inside it.
fn trace_batch(
    traced: &[(Trace, Instant)],
    (requests, rows): (usize, usize),
    started: Instant,
    compute: (Instant, Instant),
) {
    // The batch ends with its run: once the answers are sent, a server span
    // may end before this thread gets here, and a child must not outlast it.
    let ended = compute.1;
    for (i, (trace, enqueued)) in traced.iter().enumerate() {
        trace.stage(
            "switchyard.queue",
            (*enqueued, started),
            Vec::new(),
            Vec::new(),
        );
        let links = traced
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .take(crate::core::trace::MAX_BATCH_LINKS)
            .map(|(_, (other, _))| other.link())
            .collect();
        let attributes = vec![
            KeyValue::new("switchyard.batch.size", requests as i64),
            KeyValue::new("switchyard.batch.rows", rows as i64),
        ];
        if let Some(batch) = trace.stage("switchyard.batch", (started, ended), attributes, links) {
            batch.stage("switchyard.compute", compute, Vec::new(), Vec::new());
        }
    }
}

/// Runs jobs together and answers each of them; returns when the backend's
/// work began and ended.
fn answer(
    backend: &mut dyn Backend,
    batch: Vec<Job>,
    policy: &BatchPolicy,
    stats: &Stats,
    check: &OutputCheck,
) -> (Instant, Instant) {
    let started = Instant::now();
    let rows: Vec<usize> = batch.iter().map(Job::rows).collect();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if let [only] = batch.as_slice() {
            return backend.infer(&only.inputs, &only.outputs).map(|o| vec![o]);
        }
        let inputs: Vec<&[Tensor]> = batch.iter().map(|j| j.inputs.as_slice()).collect();
        let outputs = backend.infer(&batch::concat(&inputs), &batch[0].outputs)?;
        check.batched(&policy.outputs, &outputs, rows.iter().sum())?;
        batch::split(outputs, &rows)
    }))
    .unwrap_or_else(|_| Err(Error::Internal("the backend panicked".into())));
    let took = started.elapsed();
    let total_rows = if policy.max_batch_size > 0 {
        rows.iter().sum()
    } else {
        1
    };
    stats.record_run(total_rows, took);
    let mut ended = started + took;
    match result {
        Ok(per_job) => {
            stats
                .inference_count
                .fetch_add(total_rows as u64, std::sync::atomic::Ordering::Relaxed);
            for (job, out) in batch.into_iter().zip(per_job) {
                let _ = job.reply.send(Ok(out));
            }
        }
        // A value the model refuses (a text too long, say) fails the whole run, and
        // so may a request asking for a huge output: each request runs again
        // alone, so only the one that brought it gets the error.
        Err(Error::InvalidInput(_) | Error::OutOfMemory(_)) if batch.len() > 1 => {
            for job in batch {
                ended = answer(backend, vec![job], policy, stats, check).1;
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
    (started, ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// Blocks inside `infer` until the test lets it go, so the queue can be filled.
    struct Gate(Arc<Barrier>);

    impl Backend for Gate {
        fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
            self.0.wait();
            Ok(inputs.to_vec())
        }
    }

    fn job() -> (Job, oneshot::Receiver<Result<Vec<Tensor>>>) {
        let (reply, rx) = oneshot::channel();
        (
            Job {
                inputs: vec![],
                outputs: vec![],
                reply,
                enqueued: Instant::now(),
                deadline: None,
                trace: None,
            },
            rx,
        )
    }

    /// Echoes its inputs as outputs; blocks on the gate; records each run's rows.
    /// Counts the runs that have started, so a test can wait until the worker is
    /// inside one (an empty queue only says the worker took the job: it may still
    /// be forming its batch).
    type Entered = Arc<std::sync::atomic::AtomicUsize>;

    fn wait_entered(entered: &Entered) {
        while entered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
    }

    struct Echo(Arc<Barrier>, Arc<std::sync::Mutex<Vec<i64>>>, Entered);

    impl Backend for Echo {
        fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
            self.2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.wait();
            self.1.lock().unwrap().push(inputs[0].shape[0]);
            Ok(inputs.to_vec())
        }
    }

    fn rows_job(start: i64, rows: i64, cols: i64) -> (Job, oneshot::Receiver<Result<Vec<Tensor>>>) {
        let (reply, rx) = oneshot::channel();
        let data: Vec<u8> = (0..rows * cols)
            .flat_map(|i| (start + i).to_le_bytes())
            .collect();
        let t = Tensor {
            name: "x".into(),
            dtype: crate::core::tensor::DataType::I64,
            shape: vec![rows, cols],
            data: data.into(),
        };
        let job = Job {
            inputs: vec![t],
            outputs: vec!["x".into()],
            reply,
            enqueued: Instant::now(),
            deadline: None,
            trace: None,
        };
        (job, rx)
    }

    /// Refuses any run holding a negative value, as a tokenizer refuses a long text.
    struct NoNegatives;

    impl Backend for NoNegatives {
        fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
            if inputs[0]
                .data
                .chunks_exact(8)
                .any(|c| i64::from_le_bytes(c.try_into().unwrap()) < 0)
            {
                return Err(Error::invalid("a negative value"));
            }
            Ok(inputs.to_vec())
        }
    }

    #[test]
    fn a_refused_value_fails_only_the_request_that_brought_it() {
        let policy = BatchPolicy {
            max_batch_size: 8,
            max_queue_delay: Duration::ZERO,
            priority_levels: 1,
            preferred: vec![],
            outputs: vec![],
            inline_budget: Duration::ZERO,
        };
        let (a, mut ra) = rows_job(0, 2, 1);
        let (b, mut rb) = rows_job(-5, 1, 1);
        let (c, mut rc) = rows_job(7, 3, 1);
        execute(&mut NoNegatives, vec![a, b, c], &runner(&policy));
        let ok = |r: &mut oneshot::Receiver<Result<Vec<Tensor>>>| r.try_recv().unwrap();
        assert_eq!(ok(&mut ra).unwrap()[0].shape, vec![2, 1]);
        assert!(ok(&mut rb).unwrap_err().to_string().contains("negative"));
        assert_eq!(ok(&mut rc).unwrap()[0].shape, vec![3, 1]);
    }

    fn runner(policy: &BatchPolicy) -> Runner {
        Runner {
            stats: Arc::new(Stats::new(policy.max_batch_size)),
            policy: policy.clone(),
            check: OutputCheck {
                label: "m/1".into(),
                logged: Default::default(),
            },
        }
    }

    /// Answers every run with one row of `[rows * 2]` values: the rank the model
    /// declares ([-1, 2]) flattened, as a faulty or mis-declared model would.
    struct Flattens;

    impl Backend for Flattens {
        fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
            let x = &inputs[0];
            Ok(vec![Tensor {
                shape: vec![x.shape[0] * x.shape[1]],
                ..x.clone()
            }])
        }
    }

    /// Fails every run as the server's fault, counting the runs.
    struct Broken(usize);

    impl Backend for Broken {
        fn infer(&mut self, _inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
            self.0 += 1;
            Err(Error::Internal("out of memory".into()))
        }
    }

    #[test]
    fn a_fault_of_the_server_fails_the_batch_once_without_re_runs() {
        let policy = BatchPolicy {
            max_batch_size: 8,
            ..Default::default()
        };
        let (jobs, mut replies): (Vec<_>, Vec<_>) = (0..3).map(|i| rows_job(i, 1, 1)).unzip();
        let mut backend = Broken(0);
        execute(&mut backend, jobs, &runner(&policy));
        assert_eq!(backend.0, 1, "one run for the batch, no run per request");
        for r in &mut replies {
            let e = r.try_recv().unwrap().unwrap_err();
            assert_eq!(e.status_code(), 500);
        }
    }

    #[test]
    fn a_batched_output_unlike_the_declared_one_reaches_no_client() {
        let policy = BatchPolicy {
            max_batch_size: 8,
            outputs: vec![TensorSpec {
                name: "x".into(),
                dtype: crate::core::tensor::DataType::I64,
                shape: vec![-1, 2],
                symbols: vec![None, None],
            }],
            ..Default::default()
        };
        // 1 + 1 rows of 2: the flat output has 4 values at dim 0, which
        // `split` alone would cut as 1 + 1 "rows" of the first request's data.
        let (a, mut ra) = rows_job(0, 1, 2);
        let (b, mut rb) = rows_job(100, 1, 2);
        execute(&mut Flattens, vec![a, b], &runner(&policy));
        for r in [&mut ra, &mut rb] {
            let e = r.try_recv().unwrap().unwrap_err();
            assert_eq!(e.status_code(), 500);
            assert!(e.to_string().contains("output 'x'"), "{e}");
        }
        // Alone, a request gets what the model answered: no one else's rows in it.
        let (c, mut rc) = rows_job(7, 1, 2);
        execute(&mut Flattens, vec![c], &runner(&policy));
        assert_eq!(rc.try_recv().unwrap().unwrap()[0].shape, vec![2]);
    }

    #[test]
    fn queued_jobs_form_the_next_batch_within_its_limits() {
        let gate = Arc::new(Barrier::new(2));
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let entered = Entered::default();
        let policy = BatchPolicy {
            max_batch_size: 4,
            max_queue_delay: Duration::ZERO,
            priority_levels: 0,
            preferred: vec![],
            outputs: vec![],
            inline_budget: Duration::ZERO,
        };
        let w = Workers::spawn(
            &Scope::new("test"),
            "b",
            vec![Box::new(Echo(gate.clone(), runs.clone(), entered.clone()))],
            16,
            Duration::ZERO,
            policy,
            Arc::default(),
        )
        .unwrap();
        let (j0, r0) = rows_job(0, 1, 2);
        w.submit(j0, 0, "m", 1).unwrap();
        wait_entered(&entered);
        // While the worker is busy: 1 + 2 rows fit together; 2 more would make 5;
        // a job with other trailing dims cannot join; a cancelled one is dropped.
        let (j1, r1) = rows_job(100, 1, 2);
        let (j2, r2) = rows_job(200, 2, 2);
        let (j3, r3) = rows_job(300, 2, 2);
        let (j4, r4) = rows_job(400, 1, 3);
        let (j5, r5) = rows_job(500, 1, 2);
        drop(r5);
        for j in [j1, j2, j3, j4, j5] {
            w.submit(j, 0, "m", 1).unwrap();
        }
        for _ in 0..4 {
            gate.wait();
        }
        for (rx, start, rows, cols) in [
            (r0, 0, 1, 2),
            (r1, 100, 1, 2),
            (r2, 200, 2, 2),
            (r3, 300, 2, 2),
            (r4, 400, 1, 3),
        ] {
            let out = rx.blocking_recv().unwrap().unwrap();
            let want: Vec<u8> = (0..rows * cols)
                .flat_map(|i: i64| (start + i).to_le_bytes())
                .collect();
            assert_eq!(out[0].shape, vec![rows, cols]);
            assert_eq!(&out[0].data[..], &want[..], "job starting at {start}");
        }
        assert_eq!(*runs.lock().unwrap(), vec![1, 3, 2, 1]);
    }

    /// Echoes its inputs and records each run's rows; its first run waits for the gate.
    struct HoldFirst(
        Option<Arc<Barrier>>,
        Arc<std::sync::Mutex<Vec<i64>>>,
        Entered,
    );

    impl Backend for HoldFirst {
        fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
            self.2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(gate) = self.0.take() {
                gate.wait();
            }
            self.1.lock().unwrap().push(inputs[0].shape[0]);
            Ok(inputs.to_vec())
        }
    }

    /// Queues jobs of `sizes` rows behind a busy worker (running `busy` rows) and
    /// returns the rows of each run, the busy one first.
    fn runs_of(policy: BatchPolicy, busy: i64, sizes: &[i64]) -> Vec<i64> {
        let gate = Arc::new(Barrier::new(2));
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let entered = Entered::default();
        let w = Workers::spawn(
            &Scope::new("test"),
            "pref",
            vec![Box::new(HoldFirst(
                Some(gate.clone()),
                runs.clone(),
                entered.clone(),
            ))],
            16,
            Duration::ZERO,
            policy,
            Arc::default(),
        )
        .unwrap();
        let (j0, r0) = rows_job(0, busy, 1);
        w.submit(j0, 0, "m", 1).unwrap();
        wait_entered(&entered);
        let mut replies = vec![r0];
        for &n in sizes {
            let (j, r) = rows_job(0, n, 1);
            w.submit(j, 0, "m", 1).unwrap();
            replies.push(r);
        }
        gate.wait();
        for r in replies {
            r.blocking_recv().unwrap().unwrap();
        }
        let v = runs.lock().unwrap().clone();
        v
    }

    #[test]
    fn the_largest_preferred_batch_size_formed_is_sent() {
        let policy = |preferred: Vec<usize>| BatchPolicy {
            max_batch_size: 8,
            max_queue_delay: Duration::ZERO,
            priority_levels: 0,
            preferred,
            outputs: vec![],
            inline_budget: Duration::ZERO,
        };
        // 5 rows queued: without preferred sizes they run together; with [2, 4]
        // the worker sends 4 and the fifth row starts the next batch.
        assert_eq!(runs_of(policy(vec![]), 1, &[1, 1, 1, 1, 1]), vec![1, 5]);
        assert_eq!(
            runs_of(policy(vec![2, 4]), 1, &[1, 1, 1, 1, 1]),
            vec![1, 4, 1]
        );
        // Jobs of several rows: 2 + 3 = 5 is not preferred, 2 is.
        assert_eq!(runs_of(policy(vec![2, 4]), 1, &[2, 3]), vec![1, 2, 3]);
        // No preferred size can be formed: what is queued goes.
        assert_eq!(runs_of(policy(vec![4]), 1, &[3]), vec![1, 3]);
    }

    #[test]
    fn a_preferred_batch_size_ends_the_wait_for_more() {
        let policy = BatchPolicy {
            max_batch_size: 8,
            max_queue_delay: Duration::from_secs(30),
            priority_levels: 0,
            preferred: vec![2],
            outputs: vec![],
            inline_budget: Duration::ZERO,
        };
        // Without the preferred size, the worker would hold each batch for 30 s.
        assert_eq!(runs_of(policy, 2, &[1, 1]), vec![2, 2]);
    }

    #[test]
    fn higher_priority_queues_are_served_first() {
        let gate = Arc::new(Barrier::new(2));
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let entered = Entered::default();
        let policy = BatchPolicy {
            max_batch_size: 0,
            max_queue_delay: Duration::ZERO,
            priority_levels: 2,
            preferred: vec![],
            outputs: vec![],
            inline_budget: Duration::ZERO,
        };
        let w = Workers::spawn(
            &Scope::new("test"),
            "p",
            vec![Box::new(Echo(gate.clone(), runs.clone(), entered.clone()))],
            4,
            Duration::ZERO,
            policy,
            Arc::default(),
        )
        .unwrap();
        let (busy, r0) = rows_job(0, 1, 1);
        w.submit(busy, 1, "m", 1).unwrap();
        wait_entered(&entered);
        let (low, r_low) = rows_job(0, 2, 1);
        let (high, r_high) = rows_job(0, 3, 1);
        w.submit(low, 1, "m", 1).unwrap();
        w.submit(high, 0, "m", 1).unwrap();
        for _ in 0..3 {
            gate.wait();
        }
        for r in [r0, r_low, r_high] {
            r.blocking_recv().unwrap().unwrap();
        }
        assert_eq!(
            *runs.lock().unwrap(),
            vec![1, 3, 2],
            "the high-priority job ran first"
        );
    }

    #[test]
    fn full_queue_is_refused_and_queued_jobs_are_answered() {
        let gate = Arc::new(Barrier::new(2));
        let w = Workers::spawn(
            &Scope::new("test"),
            "t",
            vec![Box::new(Gate(gate.clone()))],
            1,
            Duration::from_micros(50),
            BatchPolicy::default(),
            Arc::default(),
        )
        .unwrap();
        let (j1, r1) = job();
        w.submit(j1, 0, "m", 1).unwrap();
        // Wait until the worker holds job 1, so the queue is empty again.
        while w.queue_depth() > 0 {
            std::thread::yield_now();
        }
        let (j2, r2) = job();
        w.submit(j2, 0, "m", 1).unwrap();
        let (j3, _r3) = job();
        let e = w.submit(j3, 0, "m", 1).unwrap_err();
        assert!(matches!(e, Error::QueueFull { capacity: 1, .. }), "{e}");
        assert_eq!(e.status_code(), 429);
        gate.wait();
        assert!(r1.blocking_recv().unwrap().is_ok());
        gate.wait();
        assert!(r2.blocking_recv().unwrap().is_ok());
    }

    /// Echoes its inputs and notes the name of the thread each run happened on.
    struct WhereRun(Arc<std::sync::Mutex<Vec<String>>>);

    impl Backend for WhereRun {
        fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.0.lock().unwrap().push(name);
            Ok(inputs.to_vec())
        }
    }

    #[test]
    fn a_cheap_request_runs_on_its_callers_thread_only_when_nothing_would_wait() {
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let budget = Duration::from_millis(5);
        let spawn = |budget: Duration, delay: Duration| {
            Workers::spawn(
                &Scope::new("test"),
                "w",
                vec![Box::new(WhereRun(runs.clone()))],
                16,
                Duration::ZERO,
                BatchPolicy {
                    max_batch_size: 8,
                    max_queue_delay: delay,
                    inline_budget: budget,
                    ..Default::default()
                },
                Arc::new(Stats::new(8)),
            )
            .unwrap()
        };
        // One run of 1 row through the queue, then a quiet moment: the worker
        // answers before it lets go of its instance.
        let measured = |w: &Workers| {
            let (j, r) = rows_job(0, 1, 2);
            w.submit(j, 0, "m", 1).unwrap();
            assert!(r.blocking_recv().unwrap().is_ok());
            while w.instances[0].try_lock().is_err() {}
            std::thread::sleep(budget);
        };
        let try_one = |w: &Workers, rows: i64| {
            let (j, r) = rows_job(10, rows, 2);
            (w.try_inline(j).is_ok(), r)
        };

        // Unmeasured yet: the first request of a size goes through the queue.
        let w = spawn(budget, Duration::ZERO);
        std::thread::sleep(budget);
        assert!(!try_one(&w, 1).0, "no run of 1 row measured yet");
        // Measured and cheap: it runs here, answered before `try_inline` returns.
        let w = spawn(budget, Duration::ZERO);
        measured(&w);
        assert_eq!(runs.lock().unwrap().pop().unwrap(), "w#0");
        let (inline, mut r) = try_one(&w, 1);
        assert!(inline);
        assert_eq!(r.try_recv().unwrap().unwrap()[0].shape, vec![1, 2]);
        let here = std::thread::current().name().unwrap_or("").to_string();
        assert_eq!(runs.lock().unwrap().pop().unwrap(), here);
        // Requests coming close together are a crowd: after a few (the mean
        // gap falls from four budgets below two), they queue, to batch.
        let inline: Vec<bool> = (0..8).map(|_| try_one(&w, 1).0).collect();
        assert!(!inline[4..].contains(&true), "{inline:?}");
        // A size not measured yet goes through the queue.
        let w = spawn(budget, Duration::ZERO);
        measured(&w);
        assert!(!try_one(&w, 3).0);
        // An instance busy this instant: queued, never waited for.
        let w = spawn(budget, Duration::ZERO);
        measured(&w);
        {
            let _busy = w.instances[0].lock().unwrap();
            assert!(!try_one(&w, 1).0);
        }
        // Over the budget: queued.
        let w = spawn(Duration::from_nanos(1), Duration::ZERO);
        measured(&w);
        assert!(!try_one(&w, 1).0, "a run takes more than 1 ns");
        // A batching delay asks for fuller batches: never inline.
        let w = spawn(budget, Duration::from_micros(1));
        measured(&w);
        assert!(!try_one(&w, 1).0);
    }
}
