//! Per-model configuration: the optional `config.toml` beside a model's version folders.

use std::path::Path;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};

/// Rows per batch when a model's graph is batchable and `config.toml` does not say.
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 64;
/// Idle polling of a worker before it sleeps (see `idle_spin_microseconds`).
pub const DEFAULT_IDLE_SPIN_MICROSECONDS: u64 = 100;
/// Compute time under which a request runs on the thread that decoded it (see
/// `inline_max_microseconds`).
pub const DEFAULT_INLINE_MAX_MICROSECONDS: u64 = 50;
/// How much CPU the server spends waiting, to save the wake-up of a sleeping
/// thread (`--latency-mode`, or `latency_mode` in a model's `config.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyMode {
    /// Never wait busily: a worker sleeps as soon as its queue is empty and a
    /// request's task sleeps until its answer wakes it. No CPU but the
    /// requests' own; each hand-off pays a thread's wake-up.
    Cpu,
    /// Wait busily only where it has just paid: a worker polls its queue
    /// for `idle_spin_microseconds` only while jobs come that close together,
    /// and a lone request polls for its answer about twice the model's last
    /// compute time. Idle: no CPU.
    #[default]
    Balanced,
    /// Always: a worker polls its queue for `idle_spin_microseconds` after
    /// every job, and a lone request polls for its answer for up to 500 µs.
    /// The least latency at one request at a time, at up to that much CPU
    /// per request when requests come further apart.
    Latency,
}

impl LatencyMode {
    /// `cpu`, `balanced` or `latency`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(LatencyMode::Cpu),
            "balanced" => Ok(LatencyMode::Balanced),
            "latency" => Ok(LatencyMode::Latency),
            other => Err(format!(
                "'{other}' is not a latency mode (cpu, balanced or latency)"
            )),
        }
    }
}

impl LatencyMode {
    /// What the mode does on `cores` cores: on one, `balanced` waits for
    /// nothing, since a busy wait there can only take the core from the
    /// thread it waits for (one core, mlp_large at concurrency 1: p50 851 µs
    /// polling, 409 µs not; results/pinned-2026-12-06).
    pub fn on(self, cores: usize) -> LatencyMode {
        if self == LatencyMode::Balanced && cores <= 1 {
            LatencyMode::Cpu
        } else {
            self
        }
    }
}

/// The cores this process may use: its CPU affinity and its cgroup's quota
/// (a pod's CPU limit), as the standard library reads them.
pub fn available_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

static SERVER_LATENCY_MODE: std::sync::OnceLock<LatencyMode> = std::sync::OnceLock::new();

/// Sets the mode of the models whose `config.toml` names none (once, at start).
pub fn set_server_latency_mode(mode: LatencyMode) {
    let _ = SERVER_LATENCY_MODE.set(mode);
}

/// Requests a version queues before it answers 429.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;

/// `DIR/<model>/config.toml`. Every key is optional; with no file, everything
/// comes from the model graph. Unknown keys are an error, so a typo is reported
/// instead of silently ignored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Largest number of rows in one run. `0`: the model has no batch dimension and
    /// its inputs are taken as the graph declares them. Unset: batching is on (with
    /// [`DEFAULT_MAX_BATCH_SIZE`]) when every input and output has a dynamic first
    /// dimension, off otherwise.
    pub max_batch_size: Option<u32>,
    /// Parallel model instances, each its own session on its own worker thread (default 1).
    pub instances: Option<usize>,
    /// ONNX Runtime intra-op threads per instance (default 1: the request path keeps a core).
    pub intra_op_threads: Option<usize>,
    /// `cpu` (default) or `cuda:N`.
    pub device: Option<String>,
    /// How long an idle worker polls its queue before it sleeps (default
    /// [`DEFAULT_IDLE_SPIN_MICROSECONDS`]; 0 sleeps at once). Saves the wake-up of a
    /// sleeping thread for back-to-back requests, at the cost of that much CPU.
    pub idle_spin_microseconds: Option<u64>,
    /// A request whose run this model completes within this time on average
    /// runs on the thread that decoded it when the model's queue is empty and an
    /// instance is free, instead of waking a worker (default
    /// [`DEFAULT_INLINE_MAX_MICROSECONDS`]; 0: always through the queue).
    pub inline_max_microseconds: Option<u64>,
    /// `cpu`, `balanced` or `latency`: how much CPU this model's workers and
    /// callers spend waiting busily (default: the server's `--latency-mode`).
    pub latency_mode: Option<LatencyMode>,
    /// Queueing options (Triton's names).
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Which of the versions found are served (Triton's `version_policy`).
    #[serde(default)]
    pub version_policy: VersionPolicyConfig,
    /// The initial traffic policy (weights, sticky_header, shadow); the admin
    /// API's changes, kept in the state directory, take precedence.
    pub traffic: Option<TrafficSpec>,
    /// Live drift against each version's `baseline.json`.
    #[serde(default)]
    pub drift: DriftConfig,
    /// Inference data capture: a sample of requests and answers kept.
    #[serde(default)]
    pub capture: CaptureConfig,
    /// `onnx` or `safetensors`; unset: from the file in the version folder.
    pub backend: Option<String>,
    /// For safetensors: the architecture the weights fit (`mlp`).
    pub architecture: Option<String>,
    /// For `architecture = "mlp"`: the layers, in order.
    #[serde(default, rename = "layer")]
    pub layers: Vec<LayerConfig>,
    /// For `architecture = "mlp"`: a softmax over the last layer's outputs.
    pub softmax: Option<bool>,
    /// For `architecture = "bert"`: tokenizing and pooling.
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// Declared inputs and outputs (safetensors holds weights only).
    #[serde(default)]
    pub input: Vec<IoConfig>,
    #[serde(default)]
    pub output: Vec<IoConfig>,
}

/// One dense layer: `y = activation(x · weightᵀ + bias)`, weight `[out, in]` as
/// PyTorch's `Linear` stores it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    pub weight: String,
    pub bias: Option<String>,
    pub in_features: usize,
    pub out_features: usize,
    /// `relu`, `gelu`, `tanh`, `sigmoid` or `none` (default).
    pub activation: Option<String>,
}

/// `[encoder]`: how a text encoder tokenizes and pools. Unset keys come from the
/// files sentence-transformers saves beside the weights.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Tokens a text may have, `[CLS]` and `[SEP]` included (default:
    /// `sentence_bert_config.json`'s `max_seq_length`, else the model's
    /// `max_position_embeddings`).
    pub max_length: Option<usize>,
    /// A longer text is cut to `max_length` (true, the default) or refused with a
    /// 400 naming it (false).
    pub truncate: Option<bool>,
    /// `mean` over the real tokens or `cls` (default: `1_Pooling/config.json`, else mean).
    pub pooling: Option<String>,
    /// L2-normalise each embedding (default: when `modules.json` lists a Normalize module).
    pub normalize: Option<bool>,
}

/// A declared input or output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IoConfig {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `[version_policy]`: at most one of the keys; none is `latest = 1`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionPolicyConfig {
    /// The N highest versions.
    pub latest: Option<usize>,
    /// Every version.
    pub all: Option<bool>,
    /// These versions (those that exist).
    pub specific: Option<Vec<u64>>,
}

/// Which versions of a model to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    Latest(usize),
    All,
    Specific(Vec<u64>),
}

impl VersionPolicy {
    /// The versions to serve out of those available (ascending).
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = match self {
            VersionPolicy::All => available.to_vec(),
            VersionPolicy::Latest(n) => available.iter().rev().take(*n).copied().collect(),
            VersionPolicy::Specific(want) => available
                .iter()
                .filter(|v| want.contains(v))
                .copied()
                .collect(),
        };
        v.sort_unstable();
        v
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Requests waiting per version beyond which new ones are refused with 429.
    pub max_queue_size: Option<usize>,
    /// How long a worker holding a partial batch waits for more rows (default 0:
    /// it runs what is queued at once, so an idle server adds no delay).
    pub max_queue_delay_microseconds: Option<u64>,
    /// Queue timeout of requests that bring none (Triton's `parameters.timeout`,
    /// gRPC's `grpc-timeout`); 0 or unset: none.
    pub default_timeout_microseconds: Option<u64>,
    /// Queues by priority, 1 the highest (Triton's `priority_levels`); a request's
    /// `parameters.priority` picks one. Unset: one queue.
    pub priority_levels: Option<usize>,
    /// The level of requests that give no priority (default: the lowest).
    pub default_priority_level: Option<usize>,
    /// Batch sizes (rows) the model runs best at (Triton's `preferred_batch_size`):
    /// a worker sends the largest of them it can form from what is queued, and
    /// stops waiting (`max_queue_delay_microseconds`) once it holds one.
    #[serde(default)]
    pub preferred_batch_size: Vec<usize>,
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl Device {
    pub fn parse(s: &str) -> Result<Device> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("cpu") {
            return Ok(Device::Cpu);
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            if let Ok(n) = n.parse() {
                return Ok(Device::Cuda(n));
            }
        }
        if s == "cuda" {
            return Ok(Device::Cuda(0));
        }
        Err(Error::load(format!(
            "config.toml: device '{s}' is not 'cpu' or 'cuda:N'"
        )))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl ModelConfig {
    /// Reads `config.toml` from a model folder; a missing file is the default config.
    pub fn load(model_dir: &Path) -> Result<ModelConfig> {
        let path = model_dir.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::load(format!("{}: {e}", path.display()))),
        };
        Self::parse(&text).map_err(|e| Error::load(format!("{}: {e}", path.display())))
    }

    /// Parses and checks the text of a `config.toml`.
    pub fn parse(text: &str) -> Result<ModelConfig> {
        let cfg: ModelConfig = toml::from_str(text).map_err(|e| Error::load(e.message()))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        if self.instances == Some(0) {
            return Err(Error::load("config.toml: instances must be at least 1"));
        }
        if self.intra_op_threads == Some(0) {
            return Err(Error::load(
                "config.toml: intra_op_threads must be at least 1",
            ));
        }
        if self.batching.max_queue_size == Some(0) {
            return Err(Error::load(
                "config.toml: batching.max_queue_size must be at least 1",
            ));
        }
        if let (Some(levels), Some(d)) = (
            self.batching.priority_levels,
            self.batching.default_priority_level,
        ) {
            if d == 0 || d > levels {
                return Err(Error::load(format!(
                    "config.toml: batching.default_priority_level must be 1..={levels}"
                )));
            }
        }
        if self.batching.preferred_batch_size.contains(&0) {
            return Err(Error::load(
                "config.toml: batching.preferred_batch_size entries must be at least 1",
            ));
        }
        self.device()?;
        self.version_policy()?;
        Ok(())
    }

    pub fn version_policy(&self) -> Result<VersionPolicy> {
        let p = &self.version_policy;
        let given = usize::from(p.latest.is_some())
            + usize::from(p.all.is_some())
            + usize::from(p.specific.is_some());
        if given > 1 {
            return Err(Error::load(
                "config.toml: [version_policy] takes one of latest, all or specific",
            ));
        }
        Ok(match (p.latest, p.all, &p.specific) {
            (Some(0), _, _) => {
                return Err(Error::load(
                    "config.toml: version_policy.latest must be at least 1",
                ))
            }
            (Some(n), _, _) => VersionPolicy::Latest(n),
            (_, Some(true), _) => VersionPolicy::All,
            (_, Some(false), _) => {
                return Err(Error::load(
                    "config.toml: version_policy.all can only be true (or use latest / specific)",
                ))
            }
            (_, _, Some(list)) => VersionPolicy::Specific(list.clone()),
            _ => VersionPolicy::Latest(1),
        })
    }

    pub fn device(&self) -> Result<Device> {
        self.device
            .as_deref()
            .map_or(Ok(Device::Cpu), Device::parse)
    }

    pub fn instances(&self) -> usize {
        self.instances.unwrap_or(1)
    }

    pub fn intra_op_threads(&self) -> usize {
        self.intra_op_threads.unwrap_or(1)
    }

    /// This model's latency mode: its own key, else the server's, as it
    /// acts on the cores this process has ([`LatencyMode::on`]).
    pub fn latency_mode(&self) -> LatencyMode {
        self.latency_mode
            .or_else(|| SERVER_LATENCY_MODE.get().copied())
            .unwrap_or_default()
            .on(available_cores())
    }

    /// How long an idle worker polls its queue (none in `cpu` mode).
    pub fn idle_spin(&self) -> std::time::Duration {
        if self.latency_mode() == LatencyMode::Cpu {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_micros(
            self.idle_spin_microseconds
                .unwrap_or(DEFAULT_IDLE_SPIN_MICROSECONDS),
        )
    }

    /// The compute time under which a request may run inline (zero: never).
    /// Never on a GPU: a CUDA session's runs stay on the worker thread that
    /// made its context current, which is the only path measured there.
    pub fn inline_budget(&self) -> std::time::Duration {
        if !matches!(self.device(), Ok(Device::Cpu)) {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_micros(
            self.inline_max_microseconds
                .unwrap_or(DEFAULT_INLINE_MAX_MICROSECONDS),
        )
    }

    pub fn max_queue_delay(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.batching.max_queue_delay_microseconds.unwrap_or(0))
    }

    pub fn default_timeout(&self) -> Option<std::time::Duration> {
        self.batching
            .default_timeout_microseconds
            .filter(|&us| us > 0)
            .map(std::time::Duration::from_micros)
    }

    /// `(levels, default level)`; `(0, 0)` without priorities.
    pub fn priorities(&self) -> (usize, usize) {
        match self.batching.priority_levels.filter(|&l| l > 0) {
            None => (0, 0),
            Some(l) => (l, self.batching.default_priority_level.unwrap_or(l)),
        }
    }

    pub fn max_queue_size(&self) -> usize {
        self.batching
            .max_queue_size
            .unwrap_or(DEFAULT_MAX_QUEUE_SIZE)
    }
}

/// A model's traffic policy, as the admin API and `config.toml` `[traffic]` give it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// Version → weight (non-negative integers, normalised). Empty: the default
    /// version takes everything.
    #[serde(default)]
    pub weights: BTreeMap<String, u64>,
    /// A request header whose value pins a caller to a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    /// A version that also gets a copy of `percent` % of the requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    pub version: String,
    pub percent: f64,
}

/// `config.toml` `[capture]`, over the server's `--capture-*` flags: each
/// key unset here takes the server's.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Off even when the server captures.
    pub enabled: Option<bool>,
    /// Share of requests recorded (default 1).
    pub sample_rate: Option<f64>,
    /// `request`, `response` or `both` (default).
    pub record: Option<CaptureRecord>,
    /// Rotating files under `DIR/<model>/<version>/`.
    pub dir: Option<std::path::PathBuf>,
    /// Their format: `jsonl` (gzip JSON Lines, default) or `parquet`
    /// (tabular models: a typed column per feature).
    pub format: Option<CaptureFormat>,
    /// Or an HTTP sink that receives CloudEvents 1.0 as KServe's logger sends them.
    pub sink: Option<String>,
    /// A file is closed and a new one begun past this many bytes of records
    /// (before compression; default 64 MiB) ...
    pub max_file_bytes: Option<u64>,
    /// ... or this many seconds after it was begun (default 3600).
    pub max_file_seconds: Option<u64>,
    /// Records waiting for the writer at most (default 4096); past it, dropped and counted.
    pub queue: Option<usize>,
    /// Bytes of tensors those records may hold (default 64 MiB); past it, dropped and counted.
    pub queue_bytes: Option<u64>,
    /// Inputs never written (personal data).
    #[serde(default)]
    pub drop_inputs: Vec<String>,
    /// BYTES inputs written as the SHA-256 of each element.
    #[serde(default)]
    pub hash_inputs: Vec<String>,
}

/// How capture files are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptureFormat {
    #[default]
    Jsonl,
    Parquet,
}

/// What a capture record holds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptureRecord {
    Request,
    Response,
    #[default]
    Both,
}

static SERVER_CAPTURE: std::sync::OnceLock<CaptureConfig> = std::sync::OnceLock::new();

/// Sets the capture of the models whose `config.toml` leaves keys unset (once, at start).
pub fn set_server_capture(c: CaptureConfig) {
    let _ = SERVER_CAPTURE.set(c);
}

impl CaptureConfig {
    /// This model's keys over the server's; `None` when nothing is captured.
    /// The destination is one key: a model that names a dir or a sink takes
    /// its own, whatever the server's.
    pub fn effective(&self) -> crate::core::error::Result<Option<CaptureConfig>> {
        if self.dir.is_some() && self.sink.is_some() {
            return Err(crate::core::error::Error::load(
                "[capture] names both a dir and a sink: one destination a model".to_string(),
            ));
        }
        let server = SERVER_CAPTURE.get().cloned().unwrap_or_default();
        let own =
            |v: &Vec<String>, server: Vec<String>| if v.is_empty() { server } else { v.clone() };
        let (dir, sink) = if self.dir.is_some() || self.sink.is_some() {
            (self.dir.clone(), self.sink.clone())
        } else {
            (server.dir, server.sink)
        };
        let c = CaptureConfig {
            enabled: self.enabled.or(server.enabled),
            sample_rate: self.sample_rate.or(server.sample_rate),
            record: self.record.or(server.record),
            dir,
            format: self.format.or(server.format),
            sink,
            max_file_bytes: self.max_file_bytes.or(server.max_file_bytes),
            max_file_seconds: self.max_file_seconds.or(server.max_file_seconds),
            queue: self.queue.or(server.queue),
            queue_bytes: self.queue_bytes.or(server.queue_bytes),
            drop_inputs: own(&self.drop_inputs, server.drop_inputs),
            hash_inputs: own(&self.hash_inputs, server.hash_inputs),
        };
        let somewhere = c.dir.is_some() || c.sink.is_some();
        if c.sink.is_some() && c.format.is_some() {
            return Err(crate::core::error::Error::load(
                "[capture] format applies to files (dir); a sink receives CloudEvents".to_string(),
            ));
        }
        if c.enabled == Some(true) && !somewhere {
            return Err(crate::core::error::Error::load(
                "[capture] enabled = true names no dir or sink (nor does --capture-dir or --capture-sink)"
                    .to_string(),
            ));
        }
        Ok((somewhere && c.enabled != Some(false) && c.sample_rate != Some(0.0)).then_some(c))
    }
}

/// `config.toml` `[drift]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Off even when a profile exists.
    pub enabled: Option<bool>,
    /// Share of requests observed (default 1).
    pub sample_rate: Option<f64>,
    /// Rows in the sliding window at most (default 1000).
    pub window: Option<usize>,
    /// Also forget rows older than this many seconds (default: only the row count).
    pub window_seconds: Option<f64>,
    /// PSI at or above which a feature counts as drifted (default 0.1).
    pub psi_threshold: Option<f64>,
    /// Share of drifted features that raises the alert (default 0.5).
    pub share: Option<f64>,
    /// Fewer rows than this in the window: no feature counts as drifted yet
    /// (default 100; the statistics are still reported).
    pub min_rows: Option<usize>,
}

#[cfg(test)]
mod tests {

    #[test]
    fn inline_runs_are_for_cpu_models_only_and_can_be_turned_off() {
        let us = std::time::Duration::from_micros;
        let budget = |toml: &str| ModelConfig::parse(toml).unwrap().inline_budget();
        assert_eq!(budget(""), us(DEFAULT_INLINE_MAX_MICROSECONDS));
        assert_eq!(budget("inline_max_microseconds = 20\n"), us(20));
        assert_eq!(budget("inline_max_microseconds = 0\n"), us(0));
        assert_eq!(budget("device = \"cuda:0\"\n"), us(0));
    }

    #[test]
    fn a_models_latency_mode_overrides_the_servers() {
        let cpu =
            ModelConfig::parse("latency_mode = \"cpu\"\nidle_spin_microseconds = 50\n").unwrap();
        assert_eq!(cpu.latency_mode(), LatencyMode::Cpu);
        // cpu: the worker sleeps at once, whatever the spin says.
        assert_eq!(cpu.idle_spin(), std::time::Duration::ZERO);
        let latency = ModelConfig::parse("latency_mode = \"latency\"\n").unwrap();
        assert_eq!(latency.idle_spin(), std::time::Duration::from_micros(100));
        assert!(ModelConfig::parse("latency_mode = \"fast\"\n").is_err());
        assert_eq!(LatencyMode::parse("balanced"), Ok(LatencyMode::Balanced));
        // One core: balanced polls for nothing; a choice of latency stands.
        assert_eq!(LatencyMode::Balanced.on(1), LatencyMode::Cpu);
        assert_eq!(LatencyMode::Balanced.on(2), LatencyMode::Balanced);
        assert_eq!(LatencyMode::Latency.on(1), LatencyMode::Latency);
        assert!(LatencyMode::parse("fast")
            .unwrap_err()
            .contains("cpu, balanced or latency"));
    }

    use super::*;

    #[test]
    fn version_policies_select_versions() {
        let policy = |t: &str| toml::from_str::<ModelConfig>(t).unwrap().version_policy();
        let have = [1, 2, 5, 7];
        assert_eq!(policy("").unwrap().select(&have), vec![7]);
        assert_eq!(
            policy("[version_policy]\nlatest = 2")
                .unwrap()
                .select(&have),
            vec![5, 7]
        );
        assert_eq!(
            policy("[version_policy]\nall = true")
                .unwrap()
                .select(&have),
            vec![1, 2, 5, 7]
        );
        assert_eq!(
            policy("[version_policy]\nspecific = [2, 3, 7]")
                .unwrap()
                .select(&have),
            vec![2, 7]
        );
        for bad in [
            "[version_policy]\nlatest = 0",
            "[version_policy]\nall = false",
            "[version_policy]\nlatest = 1\nall = true",
        ] {
            assert!(policy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_keys_and_rejects_unknown_ones() {
        let c: ModelConfig = toml::from_str(
            "max_batch_size = 8\ninstances = 2\ndevice = \"cuda:1\"\n[batching]\nmax_queue_size = 4\n",
        )
        .unwrap();
        assert_eq!(c.max_batch_size, Some(8));
        assert_eq!(c.device().unwrap(), Device::Cuda(1));
        assert_eq!(c.max_queue_size(), 4);
        let e = toml::from_str::<ModelConfig>("max_batch = 8").unwrap_err();
        assert!(e.message().contains("max_batch"), "{}", e.message());
        assert!(Device::parse("tpu").is_err());
    }
}

#[cfg(test)]
mod capture_tests {
    use super::*;

    #[test]
    fn capture_keys_merge_and_the_destination_is_one_key() {
        // No server capture is set in this process: a model's own only.
        let dir = CaptureConfig {
            dir: Some("/d".into()),
            ..Default::default()
        };
        assert_eq!(dir.effective().unwrap().unwrap().dir, Some("/d".into()));
        let both = CaptureConfig {
            sink: Some("http://x".into()),
            ..dir.clone()
        };
        assert!(both.effective().is_err());
        let off = CaptureConfig {
            sample_rate: Some(0.0),
            ..dir.clone()
        };
        assert!(off.effective().unwrap().is_none());
        let nowhere = CaptureConfig {
            enabled: Some(true),
            ..Default::default()
        };
        assert!(nowhere.effective().is_err());
        assert!(CaptureConfig::default().effective().unwrap().is_none());
    }
}
