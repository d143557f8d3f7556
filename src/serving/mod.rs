//! The data plane: loaded model versions, the table that names them (an
//! `ArcSwap` snapshot read without a lock), routing between versions, and the
//! scheduler (queues, batcher, worker threads) that runs requests on a runtime.
//!
//! Imports: `core`, `runtime`. What a layer above wants to see of a request
//! (drift, capture) it attaches as a [`RequestObserver`].

pub mod metrics;
mod observer;
mod stats;
mod table;
pub mod traffic;
mod worker;

pub use crate::core::config::TrafficSpec;
pub use crate::core::metadata::{parse_version, ModelMetadata, TensorSpec};
pub use observer::{Answer, Observation, RequestObserver};
pub use stats::{Histogram, Stats, Tally, Window};
pub use table::{IndexEntry, Model, ModelTable, Models, Publisher, Retiring, Routed, VersionState};
pub use traffic::{ShadowStats, Traffic};
pub use worker::{BatchPolicy, Job, Spin, Workers};

use std::sync::Arc;

use crate::core::error::{Error, Result};
use crate::core::request::{InferRequest, InferResponse};
use crate::core::tensor::{DataType, Tensor};

/// A version's configuration in the shape of Triton's model configuration, which
/// clients such as perf_analyzer read before they send anything.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    pub name: String,
    pub platform: &'static str,
    pub backend: &'static str,
    pub max_batch_size: u32,
    /// With batching, dims leave out the batch dim.
    pub inputs: Vec<ConfigTensor>,
    pub outputs: Vec<ConfigTensor>,
    pub instances: usize,
    /// The GPU it runs on, if any.
    pub gpu: Option<u32>,
    /// `(preferred batch sizes, max queue delay µs)` when batching is on.
    pub dynamic_batching: Option<(Vec<usize>, u64)>,
    /// Which versions of the model are served.
    pub version_policy: crate::core::config::VersionPolicy,
}

/// An input or output as Triton's model configuration shows it.
#[derive(Debug, Clone)]
pub struct ConfigTensor {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
    /// Triton's `reshape`: the dims the model takes when `dims` differs. A
    /// batched input of one value a row (texts, `[-1]`) is shown as dims `[1]`
    /// reshaped to `[]`, as Triton requires dims to be non-empty; its clients
    /// (perf_analyzer) then send `[batch, 1]`, which is taken as `[batch]`.
    pub reshape: Option<Vec<i64>>,
}

/// One servable version of a model: its metadata and the workers that run it.
pub struct ModelVersion {
    pub model: Arc<str>,
    pub version: u64,
    pub metadata: ModelMetadata,
    pub stats: Arc<Stats>,
    workers: Workers,
    /// Requests between submit and answer, to tell a lone request from a crowd.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Queue timeout of requests that bring none (`default_timeout_microseconds`).
    default_timeout: Option<std::time::Duration>,
    /// Triton's `priority_levels` (0: none) and the level of requests that give none.
    priority_levels: usize,
    default_priority: usize,
    /// How long loading and warming it up took.
    pub load_duration: std::time::Duration,
    /// What watches this version's requests (a drift monitor).
    observers: Vec<Arc<dyn RequestObserver>>,
    /// How its lone requests wait for their answers.
    latency_mode: crate::core::config::LatencyMode,
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The longest a lone request polls for its answer before its task sleeps.
const MAX_REPLY_POLL: std::time::Duration = std::time::Duration::from_micros(500);

/// Awaits a worker's answer. A lone request (nothing else in flight on its
/// version) first polls for it for `poll`, yielding to the runtime between polls:
/// a small model answers within microseconds, and waking a sleeping I/O thread
/// costs more than that on a virtual machine (mlp_small over gRPC at concurrency
/// 1: p50 82 → 58 µs). Under load the task just sleeps until woken.
async fn await_reply(
    mut rx: tokio::sync::oneshot::Receiver<Result<Vec<Tensor>>>,
    poll: Option<std::time::Duration>,
) -> std::result::Result<Result<Vec<Tensor>>, ()> {
    if let Some(poll) = poll {
        let until = std::time::Instant::now() + poll;
        while std::time::Instant::now() < until {
            match rx.try_recv() {
                Ok(r) => return Ok(r),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                    tokio::task::yield_now().await
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => return Err(()),
            }
        }
    }
    rx.await.map_err(|_| ())
}

impl ModelVersion {
    pub fn new(
        model: Arc<str>,
        version: u64,
        metadata: ModelMetadata,
        workers: Workers,
        stats: Arc<Stats>,
    ) -> Self {
        ModelVersion {
            model,
            version,
            metadata,
            stats,
            workers,
            in_flight: Default::default(),
            default_timeout: None,
            priority_levels: 0,
            default_priority: 0,
            load_duration: std::time::Duration::ZERO,
            observers: Vec::new(),
            latency_mode: Default::default(),
        }
    }

    /// How this version's lone requests wait for their answers.
    pub fn with_latency_mode(mut self, mode: crate::core::config::LatencyMode) -> Self {
        self.latency_mode = mode;
        self
    }

    /// Attaches an observer of every request this version answers.
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// The first observer of type `T`, for the layer that attached it.
    pub fn observer<T: 'static>(&self) -> Option<&T> {
        self.observers
            .iter()
            .find_map(|o| o.as_any().downcast_ref::<T>())
    }

    /// Sets Triton's `priority_levels` and `default_priority_level` (1 is the highest).
    pub fn with_priorities(mut self, levels: usize, default: usize) -> Self {
        self.priority_levels = levels;
        self.default_priority = default;
        self
    }

    /// The queue index (0 = highest) of a request, from `parameters.priority`
    /// (1 = highest; 0 or none: the default level).
    fn priority(&self, req: &InferRequest) -> Result<usize> {
        let level = match req.parameters.get("priority") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::invalid(format!(
                    "parameter 'priority' is a level from 1 (highest), a non-negative integer; got {v}"
                ))
            })? as usize,
        };
        let level = if level == 0 {
            self.default_priority
        } else {
            level
        };
        if self.priority_levels == 0 {
            return Ok(0);
        }
        if level > self.priority_levels {
            return Err(Error::invalid(format!(
                "parameter 'priority' is {level}, but model '{}' has {} priority levels",
                self.model, self.priority_levels
            )));
        }
        Ok(level.max(1) - 1)
    }

    /// Sets the queue timeout of requests that bring none.
    pub fn with_default_timeout(mut self, t: Option<std::time::Duration>) -> Self {
        self.default_timeout = t;
        self
    }

    /// Validates, queues and awaits one request. Never blocks the async runtime:
    /// the run happens on this version's worker threads.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse> {
        let (start, protocol) = (std::time::Instant::now(), req.protocol);
        let result = self.run(req).await;
        self.stats
            .metrics
            .request(protocol, start.elapsed(), result.as_ref().map(|_| ()));
        result
    }

    async fn run(&self, mut req: InferRequest) -> Result<InferResponse> {
        self.metadata.apply_reshapes(&mut req);
        self.metadata.validate(&req)?;
        let deadline = self.deadline(&req)?;
        let outputs: Vec<String> = if req.outputs.is_empty() {
            self.metadata.default_outputs()
        } else {
            req.outputs.iter().map(|o| o.name.clone()).collect()
        };
        let start = std::time::Instant::now();
        let _in_flight = InFlight::enter(&self.in_flight);
        // Refused requests are no observed ones: the priority is checked first.
        let level = self.priority(&req)?;
        let observed: smallvec::SmallVec<[(usize, Observation); 1]> = self
            .observers
            .iter()
            .enumerate()
            .filter_map(|(i, o)| Some((i, o.on_request(&req)?)))
            .collect();
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            inputs: req.inputs,
            outputs,
            reply,
            enqueued: start,
            deadline,
            trace: req.trace,
        };
        // Answered already when it ran inline: the reply is waiting in `rx`.
        let poll = match self.workers.try_inline(job) {
            Ok(()) => None,
            Err(job) => {
                self.workers.submit(job, level, &self.model, self.version)?;
                self.reply_poll()
            }
        };
        let result = await_reply(rx, poll).await.unwrap_or_else(|_| {
            Err(Error::Internal(format!(
                "model '{}' version {} stopped before answering",
                self.model, self.version
            )))
        });
        let took = start.elapsed();
        match &result {
            Ok(_) => {
                self.stats.success.record(took);
                self.stats.latency.record(took);
                self.stats.mark_last_inference();
            }
            Err(_) => self.stats.fail.record(took),
        }
        for (i, kept) in observed {
            let answer = Answer {
                outputs: result.as_deref(),
                latency: took,
            };
            self.observers[i].on_response(kept, answer);
        }
        let outputs = result?;
        Ok(InferResponse {
            id: req.id,
            model: self.model.clone(),
            version: self.version,
            outputs,
            parameters: Default::default(),
        })
    }

    /// Runs one request and waits for the answer, from a thread that may block
    /// (the watcher's warm-up). Counted in the run statistics, not as a served request.
    pub fn infer_blocking(&self, req: InferRequest) -> Result<Vec<Tensor>> {
        self.metadata.validate(&req)?;
        let outputs = self.metadata.default_outputs();
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.workers.submit(
            Job {
                inputs: req.inputs,
                outputs,
                reply,
                enqueued: std::time::Instant::now(),
                deadline: None,
                trace: None,
            },
            0,
            &self.model,
            self.version,
        )?;
        rx.blocking_recv().map_err(|_| {
            Error::Internal(format!(
                "model '{}' version {} stopped before answering",
                self.model, self.version
            ))
        })?
    }

    /// The earliest of the protocol's deadline, Triton's `parameters.timeout` (µs)
    /// and the model's `default_timeout_microseconds`.
    fn deadline(&self, req: &InferRequest) -> Result<Option<std::time::Instant>> {
        let now = std::time::Instant::now();
        let param = match req.parameters.get("timeout") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(0) => None,
                // Past what an Instant can hold is no deadline at all.
                Some(us) => now.checked_add(std::time::Duration::from_micros(us)),
                None => {
                    return Err(Error::invalid(format!(
                        "parameter 'timeout' is in microseconds, a non-negative integer; got {v}"
                    )))
                }
            },
        };
        let default = self.default_timeout.and_then(|d| now.checked_add(d));
        Ok([req.deadline, param, default].into_iter().flatten().min())
    }

    /// How long a queued request polls for its answer: none in `cpu` mode or
    /// in a crowd; when it is alone, [`MAX_REPLY_POLL`] in `latency` mode, and in
    /// `balanced` twice the latest run's compute time plus 20 µs, within it. The
    /// latest run, not the mean: a lone request runs alone, and the mean is
    /// skewed by the batches of busy times.
    fn reply_poll(&self) -> Option<std::time::Duration> {
        let alone = self.in_flight.load(std::sync::atomic::Ordering::Relaxed) <= 1;
        match self.latency_mode {
            crate::core::config::LatencyMode::Cpu => None,
            crate::core::config::LatencyMode::Balanced => alone.then(|| self.balanced_poll()),
            crate::core::config::LatencyMode::Latency => alone.then_some(MAX_REPLY_POLL),
        }
    }

    fn balanced_poll(&self) -> std::time::Duration {
        let last = self
            .stats
            .last_compute_ns
            .load(std::sync::atomic::Ordering::Relaxed);
        (std::time::Duration::from_nanos(last) * 2 + std::time::Duration::from_micros(20))
            .min(MAX_REPLY_POLL)
    }

    /// This version's configuration as Triton's clients read it.
    pub fn serving_config(&self, config: &crate::core::config::ModelConfig) -> ServingConfig {
        let batched = self.metadata.max_batch_size > 0;
        let dims = |specs: &[TensorSpec], inputs: bool| {
            specs
                .iter()
                .map(|s| {
                    let d = if batched { &s.shape[1..] } else { &s.shape[..] };
                    let scalar_rows = inputs && batched && d.is_empty();
                    ConfigTensor {
                        name: s.name.clone(),
                        dtype: s.dtype,
                        dims: if scalar_rows { vec![1] } else { d.to_vec() },
                        reshape: scalar_rows.then(Vec::new),
                    }
                })
                .collect()
        };
        ServingConfig {
            name: self.model.to_string(),
            platform: self.metadata.platform,
            backend: if self.metadata.platform.starts_with("onnx") {
                "onnxruntime"
            } else {
                "candle"
            },
            max_batch_size: self.metadata.max_batch_size,
            inputs: dims(&self.metadata.inputs, true),
            outputs: dims(&self.metadata.outputs, false),
            instances: self.workers.instances(),
            gpu: match config.device() {
                Ok(crate::core::config::Device::Cuda(n)) => Some(n),
                _ => None,
            },
            dynamic_batching: batched.then(|| {
                (
                    config.batching.preferred_batch_size.clone(),
                    config.max_queue_delay().as_micros() as u64,
                )
            }),
            // A policy that does not parse never loaded a version: this is the default.
            version_policy: config
                .version_policy()
                .unwrap_or(crate::core::config::VersionPolicy::Latest(1)),
        }
    }

    /// The task tree's scope this version's threads and tasks run in.
    pub fn scope(&self) -> &crate::core::tasks::Scope {
        self.workers.scope()
    }

    /// The count of this version's worker threads still running; it outlives
    /// the version (see [`Retiring`]).
    pub fn workers_alive(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.workers.alive()
    }

    /// Requests waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.workers.queue_depth()
    }
}
