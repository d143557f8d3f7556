//! Backends: what runs a model version. Each instance is owned by one worker thread.

pub mod onnx;

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::ModelMetadata;
use crate::tensor::Tensor;

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

/// Loads the model file of one version folder with the backend that fits it.
pub fn load(version_dir: &Path, config: &ModelConfig) -> Result<Loaded> {
    let onnx = version_dir.join("model.onnx");
    if onnx.is_file() {
        return onnx::load(&onnx, config);
    }
    Err(crate::error::Error::load(format!(
        "{}: no model file (expected model.onnx)",
        version_dir.display()
    )))
}
