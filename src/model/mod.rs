//! Loaded model versions: their metadata, input validation, worker queues, and the table that names them.

pub mod batch;
mod stats;
mod table;
pub mod traffic;
mod worker;

pub use stats::{Histogram, Stats, Tally};
pub use table::{IndexEntry, Model, ModelControl, ModelTable, Models, Routed, VersionState};
pub use traffic::{ShadowStats, Traffic, TrafficSpec};
pub use worker::{BatchPolicy, Job, Workers};

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse};
use crate::tensor::{DataType, Tensor};

/// Parses a version as a URL or message gives it; empty means "the default version".
pub fn parse_version(model: &str, v: &str) -> Result<Option<u64>> {
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(Error::not_found(format!(
            "model '{model}' has no version '{v}' (versions are positive integers)"
        ))),
    }
}

/// The declared name, datatype and shape of one input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    /// `-1` marks a dynamic dimension.
    pub shape: Vec<i64>,
    /// The graph's symbolic name of each dimension, when it has one: two inputs
    /// whose dims share a name must agree on them.
    pub symbols: Vec<Option<String>>,
}

/// What a loaded model version takes and gives.
#[derive(Debug, Clone)]
pub struct ModelMetadata {
    pub platform: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// 0: no batch dimension; otherwise the first dim of every input and output is
    /// the batch dim and a request may carry at most this many rows.
    pub max_batch_size: u32,
}

impl ModelMetadata {
    /// Whether every input and output has a dynamic first dimension.
    pub fn dynamic_first_dims(&self) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .all(|t| t.shape.first() == Some(&-1))
    }

    /// Whether dim 0 is a batch dimension that requests can be joined along, as
    /// read off a graph with no configuration, and why. A dynamic first dim alone
    /// is not enough (`MatMul(a[M,K], b[K,N])` has two that differ): every input
    /// and output must have one *and* the graph must name them all alike, or name
    /// none of them with a single input.
    pub fn inferred_batch_dim(&self) -> (bool, String) {
        if self.inputs.is_empty() {
            return (false, "the model has no inputs".into());
        }
        if !self.dynamic_first_dims() {
            return (
                false,
                "not every input and output has a dynamic first dimension".into(),
            );
        }
        let mut names = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .map(|t| t.symbols.first().cloned().flatten());
        let first = names.next().flatten();
        let all_same = names.all(|n| n == first);
        match (first, all_same) {
            (Some(sym), true) => (
                true,
                format!("every input and output has dynamic first dimension '{sym}'"),
            ),
            (None, true) if self.inputs.len() == 1 => (
                true,
                "the only input and every output have an unnamed dynamic first dimension".into(),
            ),
            (None, true) => (
                false,
                "the inputs' dynamic first dimensions are unnamed, so nothing says they agree"
                    .into(),
            ),
            (_, false) => (
                false,
                "the graph names the dynamic first dimensions differently (or some not at all)"
                    .into(),
            ),
        }
    }

    /// The inputs as clients are told of them (model metadata): a batched input
    /// of one value a row (`[-1]`, texts) is `[-1, 1]`, as Triton shows it with
    /// its configuration's dims `[1]`; both shapes are taken.
    pub fn shown_inputs(&self) -> Vec<TensorSpec> {
        self.inputs
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if self.max_batch_size > 0 && s.shape.len() == 1 {
                    s.shape.push(1);
                    s.symbols.push(None);
                }
                s
            })
            .collect()
    }

    /// Takes a `[batch, 1]` tensor for a batched input of one value a row
    /// (`[-1]`), as the model configuration's reshape tells Triton's clients to
    /// send it.
    pub fn apply_reshapes(&self, req: &mut InferRequest) {
        if self.max_batch_size == 0 {
            return;
        }
        for t in &mut req.inputs {
            if t.shape.len() == 2
                && t.shape[1] == 1
                && self.input(&t.name).is_some_and(|s| s.shape.len() == 1)
            {
                t.shape.pop();
            }
        }
    }

    /// Checks a request against the declared inputs and outputs before it is queued,
    /// so that a mistake is a 400 naming the field and never reaches the runtime.
    pub fn validate(&self, req: &InferRequest) -> Result<()> {
        for (i, t) in req.inputs.iter().enumerate() {
            if req.inputs[..i].iter().any(|o| o.name == t.name) {
                return Err(Error::invalid(format!("input '{}' is given twice", t.name)));
            }
            let Some(spec) = self.inputs.iter().find(|s| s.name == t.name) else {
                return Err(Error::invalid(format!(
                    "unknown input '{}'; the model's inputs are {}",
                    t.name,
                    names(&self.inputs)
                )));
            };
            check_tensor(spec, t)?;
        }
        if let Some(missing) = self
            .inputs
            .iter()
            .find(|s| !req.inputs.iter().any(|t| t.name == s.name))
        {
            return Err(Error::invalid(format!(
                "missing input '{}' ({} {:?})",
                missing.name, missing.dtype, missing.shape
            )));
        }
        for o in &req.outputs {
            if !self.outputs.iter().any(|s| s.name == o.name) {
                return Err(Error::invalid(format!(
                    "unknown output '{}'; the model's outputs are {}",
                    o.name,
                    names(&self.outputs)
                )));
            }
        }
        self.check_shared_dims(req)
    }

    /// Dims that share a symbol (a batch dim `N`, a sequence length) must be equal
    /// across inputs, and so must the batch dim of a batching model.
    fn check_shared_dims(&self, req: &InferRequest) -> Result<()> {
        let mut seen: Vec<(&str, i64, &str)> = Vec::new();
        for t in &req.inputs {
            let spec = self.input(&t.name).expect("validated above");
            for (axis, sym) in spec.symbols.iter().enumerate() {
                let sym = match (axis, sym) {
                    (0, _) if self.max_batch_size > 0 => "<batch>",
                    (_, Some(s)) => s.as_str(),
                    _ => continue,
                };
                let dim = t.shape[axis];
                match seen.iter().find(|(s, _, _)| *s == sym) {
                    Some((_, d, other)) if *d != dim => {
                        return Err(Error::invalid(format!(
                            "input '{}' has {} at dim {} ('{}') but input '{}' has {}",
                            t.name, dim, axis, sym, other, d
                        )))
                    }
                    Some(_) => {}
                    None => seen.push((sym, dim, &t.name)),
                }
            }
        }
        if self.max_batch_size > 0 {
            if let Some((_, rows, name)) = seen.iter().find(|(s, _, _)| *s == "<batch>") {
                if *rows > self.max_batch_size as i64 {
                    return Err(Error::invalid(format!(
                        "input '{name}' has {rows} rows, more than the model's max_batch_size of {}",
                        self.max_batch_size
                    )));
                }
            }
        }
        Ok(())
    }

    /// The inputs' names as error messages list them: `'a', 'b'`.
    pub fn input_names(&self) -> String {
        names(&self.inputs)
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }
}

fn names(specs: &[TensorSpec]) -> String {
    let v: Vec<String> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    v.join(", ")
}

fn check_tensor(spec: &TensorSpec, t: &Tensor) -> Result<()> {
    if spec.dtype != t.dtype {
        return Err(Error::invalid(format!(
            "input '{}': datatype {} does not match the model's {}",
            t.name, t.dtype, spec.dtype
        )));
    }
    let dims_match = spec.shape.len() == t.shape.len()
        && spec
            .shape
            .iter()
            .zip(&t.shape)
            .all(|(&want, &got)| want < 0 || want == got);
    if !dims_match {
        return Err(Error::invalid(format!(
            "input '{}': shape {:?} does not match the model's {:?} (-1 is any size)",
            t.name, t.shape, spec.shape
        )));
    }
    Ok(())
}

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
    pub version_policy: crate::config::VersionPolicy,
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
    /// Live drift against the version's baseline profile, when it has one.
    pub drift: Option<Arc<crate::drift::Monitor>>,
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
            drift: None,
        }
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
            self.metadata
                .outputs
                .iter()
                .map(|s| s.name.clone())
                .collect()
        } else {
            req.outputs.iter().map(|o| o.name.clone()).collect()
        };
        let start = std::time::Instant::now();
        let _in_flight = InFlight::enter(&self.in_flight);
        let observed = self.drift.as_ref().and_then(|d| d.capture(&req.inputs));
        let (reply, rx) = tokio::sync::oneshot::channel();
        let level = self.priority(&req)?;
        self.workers.submit(
            Job {
                inputs: req.inputs,
                outputs,
                reply,
                enqueued: start,
                deadline,
            },
            level,
            &self.model,
            self.version,
        )?;
        let alone = self.in_flight.load(std::sync::atomic::Ordering::Relaxed) <= 1;
        let result = await_reply(rx, alone.then(|| self.reply_poll()))
            .await
            .unwrap_or_else(|_| {
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
        let outputs = result?;
        if let (Some(d), Some(obs)) = (&self.drift, observed) {
            d.observe(obs, &outputs);
        }
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
        let outputs = self
            .metadata
            .outputs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.workers.submit(
            Job {
                inputs: req.inputs,
                outputs,
                reply,
                enqueued: std::time::Instant::now(),
                deadline: None,
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

    /// How long a lone request polls for its answer: twice the latest run's compute
    /// time plus 20 µs, within [`MAX_REPLY_POLL`]. The latest run, not the mean: a
    /// lone request runs alone, and the mean is skewed by the batches of busy times.
    fn reply_poll(&self) -> std::time::Duration {
        let last = self
            .stats
            .last_compute_ns
            .load(std::sync::atomic::Ordering::Relaxed);
        (std::time::Duration::from_nanos(last) * 2 + std::time::Duration::from_micros(20))
            .min(MAX_REPLY_POLL)
    }

    /// This version's configuration as Triton's clients read it.
    pub fn serving_config(&self, config: &crate::config::ModelConfig) -> ServingConfig {
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
                Ok(crate::config::Device::Cuda(n)) => Some(n),
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
                .unwrap_or(crate::config::VersionPolicy::Latest(1)),
        }
    }

    /// Requests waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.workers.queue_depth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec(name: &str, dtype: DataType, shape: &[i64], sym: &[Option<&str>]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            symbols: sym.iter().map(|s| s.map(String::from)).collect(),
        }
    }

    fn tensor(name: &str, dtype: DataType, shape: &[i64]) -> Tensor {
        let n: usize = shape.iter().product::<i64>() as usize;
        Tensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data: Bytes::from(vec![0; n * dtype.size().unwrap()]),
        }
    }

    fn meta(max_batch_size: u32) -> ModelMetadata {
        ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: vec![
                spec("a", DataType::F32, &[-1, 3], &[Some("n"), None]),
                spec("b", DataType::I64, &[-1, 3], &[Some("n"), None]),
            ],
            outputs: vec![spec("y", DataType::F32, &[-1], &[Some("n")])],
            max_batch_size,
        }
    }

    fn req(inputs: Vec<Tensor>) -> InferRequest {
        InferRequest {
            inputs,
            ..Default::default()
        }
    }

    #[test]
    fn one_value_a_row_is_shown_as_dims_1_and_taken_either_way() {
        let m = ModelMetadata {
            platform: "safetensors_bert",
            inputs: vec![spec("text", DataType::Bytes, &[-1], &[None])],
            outputs: vec![spec("embedding", DataType::F32, &[-1, 384], &[None, None])],
            max_batch_size: 32,
        };
        assert_eq!(m.shown_inputs()[0].shape, [-1, 1]);
        let mut r = req(vec![Tensor {
            name: "text".into(),
            dtype: DataType::Bytes,
            shape: vec![2, 1],
            data: Bytes::from_static(b"\x01\0\0\0a\x01\0\0\0b"),
        }]);
        m.apply_reshapes(&mut r);
        assert_eq!(r.inputs[0].shape, [2]);
        m.validate(&r).unwrap();
        let unbatched = ModelMetadata {
            max_batch_size: 0,
            ..m.clone()
        };
        assert_eq!(
            unbatched.shown_inputs()[0].shape,
            [-1],
            "no batch dim to add to"
        );
    }

    #[test]
    fn dim_0_is_a_batch_dim_only_when_the_graph_says_so() {
        let m = |ins: Vec<TensorSpec>, outs: Vec<TensorSpec>| {
            ModelMetadata {
                platform: "onnxruntime_onnx",
                inputs: ins,
                outputs: outs,
                max_batch_size: 0,
            }
            .inferred_batch_dim()
            .0
        };
        let f = DataType::F32;
        // MatMul(a[M,K], b[K,N]): two dynamic first dims, named apart.
        assert!(!m(
            vec![
                spec("a", f, &[-1, -1], &[Some("M"), Some("K")]),
                spec("b", f, &[-1, -1], &[Some("K"), Some("N")])
            ],
            vec![spec("y", f, &[-1, -1], &[Some("M"), Some("N")])]
        ));
        // Unnamed and two inputs: nothing says they agree.
        assert!(!m(
            vec![spec("a", f, &[-1], &[None]), spec("b", f, &[-1], &[None])],
            vec![spec("y", f, &[-1], &[None])]
        ));
        // Unnamed, one input; or one name throughout.
        assert!(m(
            vec![spec("a", f, &[-1, 3], &[None, None])],
            vec![spec("y", f, &[-1], &[None])]
        ));
        assert!(m(meta(0).inputs, meta(0).outputs));
        // A fixed first dim anywhere.
        assert!(!m(
            vec![spec("a", f, &[2, 3], &[None, None])],
            vec![spec("y", f, &[-1], &[None])]
        ));
    }

    #[test]
    fn validation_names_the_problem() {
        let m = meta(4);
        let ok = req(vec![
            tensor("a", DataType::F32, &[2, 3]),
            tensor("b", DataType::I64, &[2, 3]),
        ]);
        m.validate(&ok).unwrap();
        let cases = [
            (
                vec![tensor("a", DataType::F32, &[2, 3])],
                "missing input 'b'",
            ),
            (
                vec![
                    tensor("a", DataType::F64, &[2, 3]),
                    tensor("b", DataType::I64, &[2, 3]),
                ],
                "datatype FP64",
            ),
            (
                vec![
                    tensor("a", DataType::F32, &[2, 4]),
                    tensor("b", DataType::I64, &[2, 3]),
                ],
                "shape [2, 4]",
            ),
            (
                vec![
                    tensor("a", DataType::F32, &[2, 3]),
                    tensor("b", DataType::I64, &[1, 3]),
                ],
                "input 'a' has 2",
            ),
            (
                vec![
                    tensor("a", DataType::F32, &[5, 3]),
                    tensor("b", DataType::I64, &[5, 3]),
                ],
                "max_batch_size of 4",
            ),
            (
                vec![
                    tensor("a", DataType::F32, &[2, 3]),
                    tensor("c", DataType::I64, &[2, 3]),
                ],
                "unknown input 'c'",
            ),
        ];
        for (inputs, want) in cases {
            let e = m.validate(&req(inputs)).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        let mut bad_out = ok.clone();
        bad_out.outputs.push(crate::infer::RequestedOutput {
            name: "z".into(),
            ..Default::default()
        });
        assert!(m
            .validate(&bad_out)
            .unwrap_err()
            .to_string()
            .contains("unknown output 'z'"));
    }
}
