//! Capture records sent to an HTTP sink as CloudEvents 1.0 in binary mode,
//! with the types, id and extensions KServe's payload logger uses, so a
//! receiver written for KServe takes them: one event for the request and one
//! for the response, `ce-id` the request's id.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::json;

use super::record::tensor;
use super::{Counts, Record};
use crate::core::error::{Error, Result};

pub const REQUEST_TYPE: &str = "org.kubeflow.serving.inference.request";
pub const RESPONSE_TYPE: &str = "org.kubeflow.serving.inference.response";

pub struct Sink {
    url: String,
    agent: ureq::Agent,
    counts: Arc<Counts>,
}

impl Sink {
    pub fn new(url: &str, counts: Arc<Counts>) -> Result<Sink> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::load(format!(
                "[capture] sink '{url}': give an http:// or https:// URL"
            )));
        }
        // A slow sink holds this thread, never a request: its queue fills and drops.
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .timeout_connect(Some(Duration::from_secs(3)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        Ok(Sink {
            url: url.to_string(),
            agent,
            counts,
        })
    }

    pub fn run(self, rx: &Receiver<Record>) {
        for record in rx {
            let mut sent = true;
            if let Some(inputs) = &record.inputs {
                let body = json!({"id": record.id, "inputs": inputs.iter().map(tensor).collect::<Vec<_>>()});
                sent &= self.send(&record, REQUEST_TYPE, &body);
            }
            if let Some(outputs) = &record.outputs {
                let body = json!({
                    "id": record.id,
                    "model_name": &*record.model,
                    "model_version": record.version.to_string(),
                    "outputs": outputs.iter().map(tensor).collect::<Vec<_>>(),
                });
                sent &= self.send(&record, RESPONSE_TYPE, &body);
            }
            if sent {
                self.counts.written.increment(1);
            } else {
                self.counts.dropped_write.increment(1);
            }
        }
    }

    fn send(&self, r: &Record, kind: &str, body: &serde_json::Value) -> bool {
        let req = ureq::http::Request::post(&self.url)
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", &r.id)
            .header("ce-type", kind)
            .header(
                "ce-source",
                format!("/switchyard/{}/{}", r.model, r.version),
            )
            .header(
                "ce-time",
                humantime::format_rfc3339_micros(r.at).to_string(),
            )
            .header("ce-inferenceservicename", &*r.model)
            .header("ce-component", "predictor")
            .header("ce-endpoint", r.version.to_string())
            .body(serde_json::to_vec(body).expect("plain data"));
        let Ok(req) = req else {
            // An id no header can carry (the client chose it).
            return false;
        };
        match self.agent.run(req) {
            Ok(resp) if resp.status().is_success() => true,
            Ok(resp) => {
                tracing::debug!(status = %resp.status(), "capture sink refused an event");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "capture sink unreachable");
                false
            }
        }
    }
}
