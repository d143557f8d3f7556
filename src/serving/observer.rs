//! The hook through which a layer above watches a version's requests (drift
//! monitors, data capture) without the version knowing what it is.

use std::any::Any;
use std::time::Duration;

use crate::core::error::Error;
use crate::core::request::InferRequest;
use crate::core::tensor::Tensor;

/// What an observer keeps of one request between its arrival and its answer.
pub type Observation = Box<dyn Any + Send>;

/// Watches the requests of one model version. Both calls are on the request
/// path: they must be cheap, never block and never fail the request.
pub trait RequestObserver: Send + Sync + 'static {
    /// A request is about to be queued; its inputs are about to move to a worker.
    /// Returns what to keep of it (a sample of its rows), if anything.
    fn on_request(&self, request: &InferRequest) -> Option<Observation>;
    /// The request that `on_request` kept `kept` of was answered, or failed.
    fn on_response(&self, kept: Observation, answer: Answer<'_>);
    /// The observer as its own type, for the layer that attached it (a drift
    /// report is read off the drift monitor).
    fn as_any(&self) -> &dyn Any;
}

/// How a request an observer kept something of ended.
pub struct Answer<'a> {
    /// Its outputs, or why it failed after it was queued.
    pub outputs: Result<&'a [Tensor], &'a Error>,
    /// From validation to the answer, as the version's latency counts it.
    pub latency: Duration,
}
