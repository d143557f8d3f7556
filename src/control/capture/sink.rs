//! Capture records sent to an HTTP sink as CloudEvents 1.0 in binary mode,
//! with the types, id and extensions KServe's payload logger uses, so a
//! receiver written for KServe takes them: one event for the request and one
//! for the response, `ce-id` the request's id.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::record::TensorsJson;
use super::{Counts, Record};
use crate::core::error::{Error, Result};

pub const REQUEST_TYPE: &str = "org.kubeflow.serving.inference.request";
pub const RESPONSE_TYPE: &str = "org.kubeflow.serving.inference.response";

/// The V2 request an `inference.request` event carries (floats written as
/// briefly as their type prints them: the body is serialised directly).
#[derive(serde::Serialize)]
struct RequestBody<'a> {
    id: &'a str,
    inputs: TensorsJson<'a>,
}

/// The V2 response an `inference.response` event carries.
#[derive(serde::Serialize)]
struct ResponseBody<'a> {
    id: &'a str,
    model_name: &'a str,
    model_version: String,
    outputs: TensorsJson<'a>,
}

pub struct Sink {
    url: String,
    agent: ureq::Agent,
    counts: Arc<Counts>,
    hash: Arc<[String]>,
    /// The server's stop: records still queued then are counted as dropped
    /// rather than sent one slow call at a time while the stop waits.
    stop: tokio_util::sync::CancellationToken,
}

impl Sink {
    pub fn new(
        url: &str,
        counts: Arc<Counts>,
        hash: Arc<[String]>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Sink> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            // Not echoed: a URL may carry credentials.
            return Err(Error::load(
                "[capture] sink: give an http:// or https:// URL".to_string(),
            ));
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
            hash,
            stop,
        })
    }

    pub fn run(self, rx: &Receiver<Record>) {
        for mut record in rx {
            if self.stop.is_cancelled() {
                self.counts.dropped_write.increment(1 + rx.len() as u64);
                return;
            }
            record.hash(&self.hash);
            if record.inputs.is_none() && record.outputs.is_none() {
                // A failed request under record = "response": no event to send.
                continue;
            }
            let mut sent = true;
            if let Some(inputs) = &record.inputs {
                let body = RequestBody {
                    id: &record.id,
                    inputs: TensorsJson(inputs),
                };
                sent &= self.send(&record, REQUEST_TYPE, &body);
            }
            if let Some(outputs) = &record.outputs {
                let body = ResponseBody {
                    id: &record.id,
                    model_name: &record.model,
                    model_version: record.version.to_string(),
                    outputs: TensorsJson(outputs),
                };
                sent &= self.send(&record, RESPONSE_TYPE, &body);
            }
            if sent {
                self.counts.written.increment(1);
            } else {
                self.counts.dropped_write.increment(1);
            }
        }
    }

    fn send(&self, r: &Record, kind: &str, body: &impl serde::Serialize) -> bool {
        // A client's id that no header can carry still names the event: the
        // body keeps it, `ce-id` gets a fresh one.
        let id = if http::HeaderValue::from_str(&r.id).is_ok() {
            r.id.clone()
        } else {
            format!("{:032x}", fastrand::u128(..))
        };
        let mut req = ureq::http::Request::post(&self.url)
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
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
            .header("ce-endpoint", r.version.to_string());
        // CloudEvents' distributed-tracing extension: the event joins the
        // caller's trace.
        if let Some(t) = &r.traceparent {
            req = req.header("ce-traceparent", t.to_string());
        }
        let req = req.body(serde_json::to_vec(body).expect("plain data"));
        let Ok(req) = req else {
            return false;
        };
        match self.agent.run(req) {
            Ok(mut resp) if resp.status().is_success() => {
                // Read, so that the connection is kept for the next event.
                let _ = resp.body_mut().with_config().limit(64 << 10).read_to_vec();
                true
            }
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
