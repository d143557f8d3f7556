//! Cloud platforms' container contracts on the HTTP port: SageMaker's
//! multi-model endpoint API and Vertex AI's configurable health and predict
//! routes. (SageMaker's single-model routes, `/ping` and `/invocations`, are
//! MLflow's, which Switchyard serves anyway.)

use std::path::PathBuf;
use std::sync::Arc;

use crate::control::repository::Registry;
use crate::core::error::{Error, Result};

/// What the platform the server runs on adds to the HTTP routes.
#[derive(Clone, Default)]
pub struct Platform {
    /// Vertex AI: `AIP_HEALTH_ROUTE` and `AIP_PREDICT_ROUTE`.
    pub vertex: Option<VertexRoutes>,
    /// SageMaker's multi-model endpoint: the models `POST /models` registered.
    pub multi_model: Option<Arc<Registry>>,
}

/// Vertex AI's routes, as its environment names them.
#[derive(Clone, Debug)]
pub struct VertexRoutes {
    pub health: String,
    pub predict: String,
}

/// The header SageMaker forwards from `InvokeEndpoint`'s `CustomAttributes`,
/// opaque to the platform; Switchyard hands it back on the answer, so that a
/// caller's request id or tag comes back with its prediction.
pub const CUSTOM_ATTRIBUTES: &str = "x-amzn-sagemaker-custom-attributes";

/// `POST /models`: `{"model_name": "...", "url": "/opt/ml/models/.../model"}`.
pub fn parse_load(body: &[u8]) -> Result<(String, PathBuf)> {
    #[derive(serde::Deserialize)]
    struct Load {
        model_name: String,
        url: String,
    }
    let load: Load = serde_json::from_slice(body).map_err(|e| {
        Error::invalid(format!(
            "not a model to load ({{\"model_name\": ..., \"url\": ...}}): {e}"
        ))
    })?;
    Ok((load.model_name, PathBuf::from(load.url)))
}

/// One model as `GET /models/{name}` describes it.
pub fn encode_model(name: &str, url: &std::path::Path) -> serde_json::Value {
    serde_json::json!({ "modelName": name, "modelUrl": url.to_string_lossy() })
}

/// `GET /models`: every registered model (one page: a server holds as many
/// models as its memory does, not more than a page's worth).
pub fn encode_list(registry: &Registry) -> Vec<u8> {
    let models: Vec<serde_json::Value> = registry
        .list()
        .iter()
        .map(|(n, p)| encode_model(n, p))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "models": models })).expect("plain data")
}
