//! The protocol-neutral inference request and response that every codec translates to and from.

use std::sync::Arc;

use crate::core::tensor::Tensor;

/// Request and tensor parameters, passed through as the client sent them.
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// One inference request, whatever protocol it came in on.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub model: String,
    /// Set when the client addressed a version explicitly (`/versions/{v}`).
    pub version: Option<u64>,
    pub inputs: Vec<Tensor>,
    /// Outputs to return; empty means all of them.
    pub outputs: Vec<RequestedOutput>,
    pub parameters: Parameters,
    /// When the protocol gave one (gRPC's `grpc-timeout`): past it, a request still
    /// queued is answered DEADLINE_EXCEEDED instead of computed.
    pub deadline: Option<std::time::Instant>,
    /// The front end it came through, for the metrics.
    pub protocol: Protocol,
}

/// The front end a request came through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Http,
    Grpc,
}

impl InferRequest {
    /// A request of whole input tensors, all outputs wanted; sizes are checked here.
    pub fn of_inputs(
        model: &str,
        version: Option<u64>,
        inputs: Vec<Tensor>,
    ) -> crate::Result<Self> {
        for t in &inputs {
            t.validate_size()?;
        }
        Ok(InferRequest {
            model: model.to_string(),
            version,
            inputs,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct RequestedOutput {
    pub name: String,
    pub parameters: Parameters,
}

/// The answer to one [`InferRequest`].
#[derive(Debug, Clone)]
pub struct InferResponse {
    pub id: Option<String>,
    pub model: Arc<str>,
    pub version: u64,
    pub outputs: Vec<Tensor>,
    pub parameters: Parameters,
}
