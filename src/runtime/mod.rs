//! Backends: what runs a model version. Each instance is owned by one worker thread.

pub mod bert;
pub mod external_data;
mod kernels;
pub mod mlp;
pub mod onnx;
pub mod transformer;

use std::path::Path;

use crate::core::config::ModelConfig;
use crate::core::error::Result;
use crate::core::metadata::ModelMetadata;
use crate::core::tensor::Tensor;

/// One runnable instance of a model version.
///
/// `infer` takes `&mut self` because ONNX Runtime's `Session::run` does: each worker
/// owns its instance, so no lock is shared between them.
pub trait Backend: Send {
    /// Runs validated inputs and returns the named outputs, in that order.
    fn infer(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>>;
}

/// A loaded version: its metadata and `config.instances()` ready instances.
pub struct Loaded {
    pub metadata: ModelMetadata,
    pub instances: Vec<Box<dyn Backend>>,
}

/// Loads the model file of one version folder with the backend that fits it:
/// `config.toml`'s `backend`, else the file found (model.onnx, model.safetensors).
pub fn load(version_dir: &Path, config: &ModelConfig) -> Result<Loaded> {
    let onnx = version_dir.join("model.onnx");
    let safetensors = version_dir.join("model.safetensors");
    match config.backend.as_deref() {
        Some("onnx") => return onnx::load(&onnx, config),
        Some("safetensors") => return safetensors_load(version_dir, config),
        Some(other) => {
            return Err(crate::core::error::Error::load(format!(
                "config.toml: backend '{other}' is not 'onnx' or 'safetensors'"
            )))
        }
        None => {}
    }
    if onnx.is_file() {
        return onnx::load(&onnx, config);
    }
    if safetensors.is_file() {
        return safetensors_load(version_dir, config);
    }
    Err(crate::core::error::Error::load(format!(
        "{}: no model file (expected model.onnx or model.safetensors)",
        version_dir.display()
    )))
}

/// A `.safetensors` file holds weights only: `config.toml`'s `architecture` says
/// what they fit.
fn safetensors_load(version_dir: &Path, config: &ModelConfig) -> Result<Loaded> {
    match config.architecture.as_deref() {
        Some("mlp") => mlp::load(&version_dir.join("model.safetensors"), config),
        Some("bert") => bert::load(version_dir, config),
        Some(other) => Err(crate::core::error::Error::load(format!(
            "config.toml: architecture '{other}' is not supported for safetensors (supported: mlp, bert)"
        ))),
        None => Err(crate::core::error::Error::load(
            "config.toml: a safetensors model needs an `architecture` (\"mlp\" with its \
             [[layer]]s, or \"bert\"): the file holds weights only",
        )),
    }
}

/// The candle device of `device = ...`: CUDA needs a build with the `cuda` feature.
pub fn candle_device(device: crate::core::config::Device) -> Result<candle_core::Device> {
    match device {
        crate::core::config::Device::Cpu => Ok(candle_core::Device::Cpu),
        #[cfg(feature = "cuda")]
        crate::core::config::Device::Cuda(n) => {
            candle_core::Device::new_cuda(n as usize).map_err(|e| {
                // The reason, without the backtrace candle attaches to driver errors.
                let e = match e {
                    candle_core::Error::WithBacktrace { inner, .. } => *inner,
                    e => e,
                };
                crate::core::error::Error::load(format!("device '{device}': {e}"))
            })
        }
        #[cfg(not(feature = "cuda"))]
        crate::core::config::Device::Cuda(_) => Err(crate::core::error::Error::load(format!(
            "device '{device}' needs a GPU build: this binary was built without the `cuda` \
             feature (build with `cargo build --release --features cuda`), or set device = \"cpu\""
        ))),
    }
}

/// A candle model's metadata and `config.instances()` instances of it: candle
/// tensors share their storage, so an instance costs no copy of the weights.
fn candle_loaded<B: Backend + Clone + 'static>(
    platform: &'static str,
    input: crate::core::metadata::TensorSpec,
    outputs: Vec<crate::core::metadata::TensorSpec>,
    config: &ModelConfig,
    backend: B,
) -> Result<Loaded> {
    let mut metadata = ModelMetadata {
        platform,
        inputs: vec![input],
        outputs,
        max_batch_size: 0,
        optional_outputs: Vec::new(),
    };
    metadata.max_batch_size = max_batch_size(config, &metadata)?;
    let instances = (0..config.instances())
        .map(|_| Box::new(backend.clone()) as Box<dyn Backend>)
        .collect();
    Ok(Loaded {
        metadata,
        instances,
    })
}

/// The batch size a version runs with: `config.toml`'s, checked against the
/// graph, or the default when the graph shows a batch dim
/// ([`ModelMetadata::inferred_batch_dim`]; the choice is logged).
pub fn max_batch_size(config: &ModelConfig, metadata: &ModelMetadata) -> Result<u32> {
    Ok(match config.max_batch_size {
        None => {
            let (batched, why) = metadata.inferred_batch_dim();
            let n = if batched {
                crate::core::config::DEFAULT_MAX_BATCH_SIZE
            } else {
                0
            };
            tracing::info!(
                max_batch_size = n,
                "{}: {why} (set max_batch_size in config.toml to choose)",
                if batched {
                    "dynamic batching on"
                } else {
                    "no batch dimension"
                }
            );
            n
        }
        Some(0) => 0,
        Some(n) => {
            if let Some(t) = metadata
                .inputs
                .iter()
                .chain(&metadata.outputs)
                .find(|t| t.shape.first() != Some(&-1))
            {
                return Err(crate::core::error::Error::load(format!(
                    "config.toml: max_batch_size = {n} needs a dynamic first dimension on every \
                     input and output, but '{}' has shape {:?}; set max_batch_size = 0",
                    t.name, t.shape
                )));
            }
            n
        }
    })
}
