//! Inference data capture: a sample of a version's requests and answers,
//! kept as records and written off the request path, to rotating gzip JSON
//! Lines files or to an HTTP sink as CloudEvents (as KServe's logger sends
//! them). A request never waits for it: a full queue drops and counts.

mod files;
mod parquet;
mod record;
mod sink;

use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Sender, TrySendError};

use crate::core::config::{CaptureConfig, CaptureRecord};
use crate::core::error::{Error, Result};
use crate::core::metadata::ModelMetadata;
use crate::core::request::InferRequest;
use crate::core::tensor::{DataType, Tensor};
use crate::serving::{Answer, Observation, RequestObserver};

pub use record::{read_dir, Record};

/// Records waiting for the writer, by default.
const QUEUE: usize = 4096;
/// Bytes of tensors they may hold, by default: a record holds a request's
/// inputs and outputs, up to --max-body-bytes each.
const QUEUE_BYTES: u64 = 64 << 20;
/// The longest request id a record keeps (a client chooses it).
const MAX_ID: usize = 256;

/// One version's capture: what to keep of a request, and the queue to the writer.
pub struct Capture {
    rate: f64,
    record: CaptureRecord,
    drop: Vec<String>,
    model: Arc<str>,
    version: u64,
    tx: Sender<Record>,
    counts: Arc<Counts>,
    /// Bytes of the records queued now, and the most they may be.
    queued: Arc<std::sync::atomic::AtomicU64>,
    budget: u64,
}

/// What a capture has done since its version was loaded.
#[derive(Debug)]
pub struct Counts {
    /// Records in files closed, or events the sink took.
    pub written: metrics::Counter,
    pub dropped_queue: metrics::Counter,
    pub dropped_write: metrics::Counter,
}

impl Counts {
    fn new(model: &str, version: u64) -> Counts {
        let labels = |reason: &'static str| {
            metrics::counter!(
                "switchyard_capture_dropped_total",
                "model" => model.to_string(),
                "version" => version.to_string(),
                "reason" => reason
            )
        };
        Counts {
            written: metrics::counter!(
                "switchyard_capture_records_total",
                "model" => model.to_string(),
                "version" => version.to_string()
            ),
            dropped_queue: labels("queue_full"),
            dropped_write: labels("write_failed"),
        }
    }
}

/// What `on_request` keeps of a sampled request until its answer.
struct Kept {
    at: SystemTime,
    id: String,
    traceparent: Option<crate::core::request::TraceParent>,
    request: Facts,
    inputs: Option<Vec<Tensor>>,
}

/// The request's facts a record carries besides its tensors.
#[derive(Clone, Copy)]
struct Facts {
    routing: crate::core::request::Routing,
    protocol: crate::core::request::Protocol,
}

impl Capture {
    /// Starts the writer of `name` version `v` for `config` (an effective
    /// one: a directory or a sink), checking the redaction against the
    /// model's inputs.
    pub fn start(
        config: &CaptureConfig,
        name: &Arc<str>,
        v: u64,
        metadata: &ModelMetadata,
        scope: &crate::core::tasks::Scope,
    ) -> Result<Arc<Capture>> {
        let input = |n: &String| metadata.inputs.iter().find(|i| &i.name == n);
        for n in config.drop_inputs.iter().chain(&config.hash_inputs) {
            if input(n).is_none() {
                return Err(Error::load(format!(
                    "[capture] names input '{n}', which model '{name}' version {v} does not have"
                )));
            }
        }
        if let Some(n) = config
            .hash_inputs
            .iter()
            .find(|n| input(n).is_some_and(|i| i.dtype != DataType::Bytes))
        {
            return Err(Error::load(format!(
                "[capture] hash_inputs names '{n}', which is not a BYTES input: drop it instead"
            )));
        }
        let rate = config.sample_rate.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&rate) {
            return Err(Error::load(format!(
                "[capture] sample_rate is {rate}: a share, 0 to 1"
            )));
        }
        let (tx, rx) = crossbeam_channel::bounded(config.queue.unwrap_or(QUEUE).max(1));
        let counts = Arc::new(Counts::new(name, v));
        let hash: Arc<[String]> = config.hash_inputs.clone().into();
        let label = format!("capture-{name}/{v}");
        let started = match (&config.dir, &config.sink) {
            (Some(dir), _) => {
                let dir = dir.join(&**name).join(v.to_string());
                let layout = match config.format.unwrap_or_default() {
                    crate::core::config::CaptureFormat::Jsonl => None,
                    crate::core::config::CaptureFormat::Parquet => {
                        Some(Arc::new(parquet::Layout::of(
                            metadata,
                            &config.drop_inputs,
                            config.record.unwrap_or_default(),
                        )?))
                    }
                };
                let files = files::Files::new(dir, config, counts.clone(), layout, hash)?;
                scope.spawn_thread(label, move || files.run(&rx))
            }
            (None, Some(url)) => {
                let sink = sink::Sink::new(url, counts.clone(), hash, scope.token().clone())?;
                scope.spawn_thread(label, move || sink.run(&rx))
            }
            (None, None) => return Err(Error::load("[capture] needs a dir or a sink".to_string())),
        };
        started.map_err(|e| Error::load(format!("cannot start the capture writer: {e}")))?;
        Ok(Arc::new(Capture {
            rate,
            record: config.record.unwrap_or_default(),
            drop: config.drop_inputs.clone(),
            model: name.clone(),
            version: v,
            tx,
            counts,
            queued: Default::default(),
            budget: config.queue_bytes.unwrap_or(QUEUE_BYTES),
        }))
    }

    /// The inputs as a record keeps them: dropped ones gone (hashed ones are
    /// hashed by the writer, off the request path).
    fn redact(&self, inputs: &[Tensor]) -> Vec<Tensor> {
        inputs
            .iter()
            .filter(|t| !self.drop.contains(&t.name))
            // A reference to the request's bytes, not a copy.
            .cloned()
            .collect()
    }
}

impl RequestObserver for Capture {
    fn on_request(&self, request: &InferRequest) -> Option<Observation> {
        if self.rate < 1.0 && fastrand::f64() >= self.rate {
            return None;
        }
        let inputs = (self.record != CaptureRecord::Response).then(|| self.redact(&request.inputs));
        Some(Box::new(Kept {
            at: SystemTime::now(),
            // KServe's logger names a request without an id by a fresh one too.
            id: match &request.id {
                Some(id) if id.len() <= MAX_ID => id.clone(),
                Some(id) => {
                    // Cut on a character boundary (MSRV 1.85 has no floor_char_boundary).
                    let end = (0..=MAX_ID)
                        .rev()
                        .find(|i| id.is_char_boundary(*i))
                        .unwrap_or(0);
                    id[..end].to_string()
                }
                None => format!("{:032x}", fastrand::u128(..)),
            },
            traceparent: request.traceparent,
            request: Facts {
                routing: request.routing,
                protocol: request.protocol,
            },
            inputs,
        }))
    }

    fn on_response(&self, kept: Observation, answer: Answer<'_>) {
        let Ok(kept) = kept.downcast::<Kept>() else {
            return;
        };
        let (outputs, error) = match answer.outputs {
            Ok(o) => (
                (self.record != CaptureRecord::Request).then(|| o.to_vec()),
                None,
            ),
            Err(e) => (None, Some(e.to_string())),
        };
        let bytes = kept
            .inputs
            .iter()
            .chain(&outputs)
            .flatten()
            .map(|t| t.data.len() as u64)
            .sum::<u64>()
            + kept.id.len() as u64;
        let held_total = self
            .queued
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            + bytes;
        let held = record::Held {
            queued: self.queued.clone(),
            bytes,
        };
        if held_total > self.budget {
            // Dropping `held` gives its bytes back.
            self.counts.dropped_queue.increment(1);
            return;
        }
        let record = Record {
            at: kept.at,
            id: kept.id,
            traceparent: kept.traceparent,
            model: self.model.clone(),
            version: self.version,
            routing: kept.request.routing,
            protocol: kept.request.protocol,
            latency: answer.latency,
            error,
            inputs: kept.inputs,
            outputs,
            held,
        };
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.counts.dropped_queue.increment(1),
            // The writer is gone (it failed to start a thread's work).
            Err(TrySendError::Disconnected(_)) => self.counts.dropped_write.increment(1),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
