//! OTLP export of the server's spans: the tracer provider, and a
//! processor that queues each finished span for one exporter thread, which
//! sends them in batches over gRPC or HTTP/protobuf. The queue is bounded: a
//! full one drops the span and counts it, and a request never waits on export.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::core::error::{Error, Result};
use crate::core::tasks::Scope;

/// How finished spans are batched: the SDK's batch processor's settings,
/// its defaults, and its variables (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Batching {
    /// Spans waiting for the exporter thread (`OTEL_BSP_MAX_QUEUE_SIZE`).
    queue: usize,
    /// The most sent in one export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    batch: usize,
    /// How long a span waits for its batch to fill (`OTEL_BSP_SCHEDULE_DELAY`, ms).
    delay: Duration,
    /// The most one export may take, retries included (`OTEL_BSP_EXPORT_TIMEOUT`, ms).
    timeout: Duration,
    /// The most one call to the collector may take
    /// (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT`, ms).
    request: Duration,
}

impl Batching {
    fn from_env(env: Env<'_>) -> Result<Batching> {
        let number = |key: &str, default: u64| -> Result<u64> {
            match env(key) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| Error::invalid(format!("{key}={v:?}: a whole number above 0"))),
            }
        };
        // Larger than the SDK's 2048 and 512: each export call, not each
        // span, cost the time (at 1 % of 50k calls/s, 512-span batches took
        // 9 % of the throughput, 8192-span ones nothing measurable), and 8192
        // is what the OpenTelemetry Collector's batch processor sends.
        let queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 16_384)? as usize;
        let request = match env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
            Some(_) => number("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 0)?,
            None => number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?,
        };
        Ok(Batching {
            queue,
            batch: (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 8192)? as usize).min(queue),
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?),
            timeout: Duration::from_millis(number("OTEL_BSP_EXPORT_TIMEOUT", 30_000)?),
            request: Duration::from_millis(request),
        })
    }
}

/// What the queue may still send once the server stops.
const STOP_FLUSH: Duration = Duration::from_secs(3);

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// `grpc` or `http/protobuf`, as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
    pub fn parse(s: &str) -> std::result::Result<Protocol, String> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            other => Err(format!(
                "OTLP protocol '{other}': grpc or http/protobuf (http/json is not sent)"
            )),
        }
    }
}

/// Where and how much to export.
#[derive(Debug, Clone)]
pub struct Options {
    /// The collector's URL; `None`: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, and no export without either.
    pub endpoint: Option<String>,
    /// `None`: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else HTTP for an endpoint on port 4318 or ending `/v1/traces`, gRPC otherwise.
    pub protocol: Option<Protocol>,
    /// The share (0 to 1, checked by the caller) of calls that bring no
    /// sampling decision that are traced; a caller's decision is followed.
    pub sample_ratio: f64,
    /// `service.instance.id`: the replica's name.
    pub instance: Option<String>,
}

/// The spans exported and dropped since the start.
#[derive(Debug, Clone)]
struct Counts {
    exported: metrics::Counter,
    dropped_queue: metrics::Counter,
    dropped_export: metrics::Counter,
}

impl Counts {
    fn new() -> Counts {
        let dropped = |reason: &'static str| metrics::counter!("switchyard_trace_spans_dropped_total", "reason" => reason);
        Counts {
            exported: metrics::counter!("switchyard_trace_spans_exported_total"),
            dropped_queue: dropped("queue_full"),
            dropped_export: dropped("export_failed"),
        }
    }
}

/// Reads one variable of the environment, unset when empty.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The endpoint and protocol that `options` and the environment give; `None`
/// when nothing asks for export (or `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none`).
fn resolve(options: &Options, env: Env<'_>) -> Result<Option<(Option<String>, Protocol)>> {
    let off = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
    let from_env =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let Some(url) = options.endpoint.clone().or(from_env).filter(|_| !off) else {
        return Ok(None);
    };
    let protocol = match options.protocol {
        Some(p) => p,
        None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => Protocol::parse(&p).map_err(Error::invalid)?,
            None => {
                let uri: http::Uri = url.parse().map_err(|e| {
                    Error::invalid(format!("the OTLP endpoint '{url}' is not a URL: {e}"))
                })?;
                if uri.port_u16() == Some(4318) || uri.path().ends_with("/v1/traces") {
                    Protocol::HttpProtobuf
                } else {
                    Protocol::Grpc
                }
            }
        },
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::invalid(format!(
            "the OTLP endpoint '{url}' is no http:// or https:// URL"
        )));
    }
    // The flag's URL is a collector's base, as the generic variable's is: an
    // HTTP exporter posts to its /v1/traces. The crate reads the variables.
    let endpoint = options.endpoint.as_ref().map(|u| match protocol {
        Protocol::HttpProtobuf if !u.ends_with("/v1/traces") => {
            format!("{}/v1/traces", u.trim_end_matches('/'))
        }
        _ => u.clone(),
    });
    Ok(Some((endpoint, protocol)))
}

/// The processor: finished spans into the bounded queue, never waiting.
#[derive(Debug)]
struct Queue {
    tx: Sender<SpanData>,
    counts: Counts,
    /// Spans a batch holds: the exporter thread is woken when that many wait.
    batch: usize,
    /// The exporter thread, once started.
    exporter: Arc<OnceLock<std::thread::Thread>>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    // The exporter sleeps until a batch is full or its delay passed: waking
    // it for every span (a blocking receive) cost a tenth of the throughput
    // at 1 % sampling, in thread switches that instruction counts do not see.
    fn on_end(&self, span: SpanData) {
        match self.tx.try_send(span) {
            // At or past: producers racing past the exact count still wake
            // it (an unpark of a running thread is one atomic swap).
            Ok(()) if self.tx.len() >= self.batch => {
                if let Some(t) = self.exporter.get() {
                    t.unpark();
                }
            }
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.counts.dropped_queue.increment(1),
            // The exporter has stopped: nothing will send it.
            Err(TrySendError::Disconnected(_)) => self.counts.dropped_export.increment(1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    // The exporter thread ends with the telemetry scope, sending what is queued.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Starts export as `options` and the environment say, and installs the
/// tracer: returns whether spans are exported. The exporter thread runs in
/// `scope`; when it is cancelled, the thread sends what is queued and ends.
pub fn start(options: &Options, scope: &Scope) -> Result<bool> {
    start_with(options, scope, &|k| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    })
}

fn start_with(options: &Options, scope: &Scope, env: Env<'_>) -> Result<bool> {
    let Some((endpoint, protocol)) = resolve(options, env)? else {
        return Ok(false);
    };
    let batching = Batching::from_env(env)?;
    let resource = resource(options.instance.as_deref());
    let (tx, rx) = crossbeam_channel::bounded(batching.queue);
    let counts = Counts::new();
    // The exporter is built on the thread's own runtime (tonic's channel
    // starts a task on the runtime it is made in); a bad setting is an error
    // of the start.
    let (built_tx, built_rx) = crossbeam_channel::bounded(1);
    let (stop, thread_counts, thread_resource) =
        (scope.token().clone(), counts.clone(), resource.clone());
    let exporter_thread = Arc::new(OnceLock::new());
    let thread_handle = exporter_thread.clone();
    let shown = endpoint
        .clone()
        .unwrap_or_else(|| "from the environment".into());
    scope
        .spawn_thread("switchyard-otlp".into(), move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = built_tx.send(Err(Error::Internal(format!(
                        "cannot start the OTLP exporter's runtime: {e}"
                    ))));
                    return;
                }
            };
            let exporter = {
                let _in = runtime.enter();
                exporter(endpoint, protocol, batching.request)
            };
            let mut exporter = match exporter {
                Ok(e) => {
                    let _ = built_tx.send(Ok(()));
                    e
                }
                Err(e) => {
                    let _ = built_tx.send(Err(e));
                    return;
                }
            };
            exporter.set_resource(&thread_resource);
            let _ = thread_handle.set(std::thread::current());
            Export {
                runtime,
                exporter,
                counts: thread_counts,
                batching,
                failing: false,
            }
            .run(&rx, &stop);
        })
        .map_err(|e| Error::Internal(format!("cannot start the OTLP exporter thread: {e}")))?;
    built_rx
        .recv()
        .map_err(|_| Error::Internal("the OTLP exporter thread ended at its start".into()))??;
    // Every span begun is meant: a call's only once its caller or
    // core::trace::draw() chose it, a shadow copy's only for a traced primary.
    let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_span_processor(Queue {
            tx,
            counts,
            batch: batching.batch,
            exporter: exporter_thread,
        })
        .with_resource(resource)
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "switchyard");
    if !crate::core::trace::install(tracer, options.sample_ratio) {
        return Err(Error::Internal("a tracer was installed before".into()));
    }
    tracing::info!(
        endpoint = %shown,
        ?protocol,
        sample_ratio = options.sample_ratio,
        "exporting spans over OTLP"
    );
    Ok(true)
}

/// The process's resource: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
/// as given, `service.name` "switchyard" when neither names one (the SDK's
/// default is `unknown_service:<executable>`).
fn resource(instance: Option<&str>) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        builder = builder.with_service_name("switchyard");
    }
    if let Some(id) = instance {
        builder = builder.with_attribute(KeyValue::new("service.instance.id", id.to_string()));
    }
    builder.build()
}

fn exporter(
    endpoint: Option<String>,
    protocol: Protocol,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter> {
    let built = match protocol {
        Protocol::Grpc => {
            let b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(timeout);
            match endpoint {
                Some(url) => b.with_endpoint(url).build(),
                None => b.build(),
            }
        }
        Protocol::HttpProtobuf => {
            let b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(Ureq::new(timeout))
                .with_timeout(timeout);
            match endpoint {
                Some(url) => b.with_endpoint(url).build(),
                None => b.build(),
            }
        }
    };
    built.map_err(|e| Error::invalid(format!("cannot set up OTLP export: {e}")))
}

/// The exporter thread's state.
struct Export {
    runtime: tokio::runtime::Runtime,
    exporter: opentelemetry_otlp::SpanExporter,
    counts: Counts,
    batching: Batching,
    /// Whether the last export failed: a failure is logged when it begins.
    failing: bool,
}

impl Export {
    /// Sends what is queued, in batches, every schedule delay or when woken
    /// because a batch is full; at the stop, within [`STOP_FLUSH`].
    fn run(mut self, rx: &Receiver<SpanData>, stop: &tokio_util::sync::CancellationToken) {
        let Batching {
            batch: size,
            delay,
            timeout,
            ..
        } = self.batching;
        let mut batch = Vec::with_capacity(size);
        let mut due = Instant::now() + delay;
        while !stop.is_cancelled() {
            // Woken at least this often to see the stop.
            std::thread::park_timeout(
                due.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200)),
            );
            let now = Instant::now();
            if rx.len() < size && now < due {
                continue;
            }
            due = now + delay;
            while !rx.is_empty() && !stop.is_cancelled() {
                batch.extend(rx.try_iter().take(size));
                self.send(&mut batch, timeout);
            }
        }
        let until = Instant::now() + STOP_FLUSH;
        loop {
            batch.extend(rx.try_iter().take(size - batch.len()));
            let left = until.saturating_duration_since(Instant::now());
            if batch.is_empty() || left.is_zero() {
                break;
            }
            self.send(&mut batch, left.min(timeout));
        }
        let lost = batch.len() + rx.len();
        if lost > 0 {
            self.counts.dropped_export.increment(lost as u64);
        }
    }

    fn send(&mut self, batch: &mut Vec<SpanData>, timeout: Duration) {
        let spans = std::mem::replace(batch, Vec::with_capacity(self.batching.batch));
        let n = spans.len() as u64;
        let exported = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, self.exporter.export(spans)).await });
        let failure = match exported {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        };
        match failure {
            None => {
                self.counts.exported.increment(n);
                if std::mem::take(&mut self.failing) {
                    tracing::info!("OTLP export works again");
                }
            }
            Some(e) => {
                self.counts.dropped_export.increment(n);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(error = %e, spans = n, "OTLP export failed; spans are dropped (and counted) until it works");
                }
            }
        }
    }
}

/// opentelemetry-http's client trait on ureq, the server's HTTP client: the
/// exporter thread runs one export at a time, so a blocking call is fine.
#[derive(Debug)]
struct Ureq(ureq::Agent);

impl Ureq {
    fn new(timeout: Duration) -> Ureq {
        Ureq(
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .timeout_connect(Some(Duration::from_secs(3)))
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into(),
        )
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Ureq {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> std::result::Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .run(http::Request::from_parts(parts, body.to_vec()))?;
        let (parts, mut body) = response.into_parts();
        // A collector's answer is a small status message.
        let body = body.with_config().limit(1 << 20).read_to_vec()?;
        Ok(http::Response::from_parts(parts, body.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(endpoint: Option<&str>) -> Options {
        Options {
            endpoint: endpoint.map(str::to_string),
            protocol: None,
            sample_ratio: 1.0,
            instance: None,
        }
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_given() {
        let none = |_: &str| None;
        assert!(resolve(&opts(None), &none).unwrap().is_none());
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4317".into());
        assert_eq!(
            resolve(&opts(None), &env).unwrap(),
            Some((None, Protocol::Grpc))
        );
        let disabled = |k: &str| match k {
            "OTEL_SDK_DISABLED" => Some("true".into()),
            _ => None,
        };
        assert!(resolve(&opts(Some("http://c:4317")), &disabled)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_protocol_follows_the_flag_the_variables_then_the_port() {
        let none = |_: &str| None;
        assert_eq!(
            resolve(&opts(Some("http://c:4318")), &none).unwrap(),
            Some((
                Some("http://c:4318/v1/traces".into()),
                Protocol::HttpProtobuf
            ))
        );
        assert_eq!(
            resolve(&opts(Some("http://c:4317")), &none).unwrap(),
            Some((Some("http://c:4317".into()), Protocol::Grpc))
        );
        let http = |k: &str| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/protobuf".into());
        assert_eq!(
            resolve(&opts(Some("http://c:9000/")), &http).unwrap(),
            Some((
                Some("http://c:9000/v1/traces".into()),
                Protocol::HttpProtobuf
            ))
        );
        let json = |k: &str| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".into());
        assert!(resolve(&opts(Some("http://c:4318")), &json).is_err());
        assert!(resolve(&opts(Some("c:4317")), &none).is_err());
    }

    #[test]
    fn batching_reads_the_sdk_variables() {
        let none = |_: &str| None;
        let b = Batching::from_env(&none).unwrap();
        assert_eq!((b.queue, b.batch), (16_384, 8192));
        let small = |k: &str| match k {
            "OTEL_BSP_MAX_QUEUE_SIZE" => Some("8".into()),
            "OTEL_BSP_SCHEDULE_DELAY" => Some("200".into()),
            _ => None,
        };
        let b = Batching::from_env(&small).unwrap();
        assert_eq!(
            (b.queue, b.batch, b.delay),
            (8, 8, Duration::from_millis(200))
        );
        let timeouts = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("2000".into()),
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" => Some("1500".into()),
            _ => None,
        };
        let b = Batching::from_env(&timeouts).unwrap();
        assert_eq!(
            b.request,
            Duration::from_millis(1500),
            "the signal's own wins"
        );
        assert_eq!(b.timeout, Duration::from_secs(30));
        let bad = |k: &str| (k == "OTEL_BSP_SCHEDULE_DELAY").then(|| "soon".into());
        assert!(Batching::from_env(&bad).is_err());
    }

    #[test]
    fn a_full_queue_drops_rather_than_waits() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let q = Queue {
            tx,
            counts: Counts::new(),
            batch: 512,
            exporter: Default::default(),
        };
        let provider = SdkTracerProvider::builder().with_span_processor(q).build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "t");
        for _ in 0..3 {
            let mut s = opentelemetry::trace::Tracer::start(&tracer, "s");
            opentelemetry::trace::Span::end(&mut s);
        }
        assert_eq!(rx.len(), 1, "one queued, two dropped");
    }
}
