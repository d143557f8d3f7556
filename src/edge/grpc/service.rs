//! The GRPCInferenceService implementation, and the per-connection wrapper that
//! gives it the peer address and Switchyard's status conventions.

use crate::core::config::VersionPolicy;
use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::Request;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::{Response, Status, Streaming};

use super::codec;
use super::proto as pb;
use super::proto::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use super::unary;
use crate::core::error::{Error, Result};
use crate::core::tasks::{Scope, Stopping};
use crate::core::tensor::DataType;
use crate::edge::auth::{AdminAuth, Port};
use crate::edge::limits::{Bounds, GrpcMetered};
use crate::edge::pipeline::{Call, Headers, Pipeline};
use crate::edge::trace::ServerSpan;
use crate::serving::{parse_version, Models};

/// The address of the client, put into each request by the connection wrapper.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

/// The service state: the model table, the admin policy and the pipeline.
pub struct InferenceService {
    models: Arc<Models>,
    control: crate::control::Control,
    admin: AdminAuth,
    pipeline: Pipeline,
    /// The edge's scope: stream tasks start there.
    scope: Scope,
    /// Readiness answers false once the stop begins.
    stopping: Arc<Stopping>,
}

/// A stream's metadata as each of its messages sees it: a stream's
/// `grpc-timeout` is no deadline of each message (nor is it enforced on the
/// stream as a whole: a gap, noted for the hardening issue).
struct StreamHeaders(MetadataMap);

impl Headers for StreamHeaders {
    fn header(&self, name: &str) -> Option<&[u8]> {
        if name == "grpc-timeout" {
            return None;
        }
        self.0.header(name)
    }
}

impl InferenceService {
    pub fn new(
        models: Arc<Models>,
        control: crate::control::Control,
        admin: AdminAuth,
        scope: Scope,
        stopping: Arc<Stopping>,
    ) -> Self {
        InferenceService {
            scope,
            pipeline: Pipeline::new(models.clone(), admin.clone()),
            models,
            control,
            admin,
            stopping,
        }
    }

    /// One inference through the pipeline; `headers` are the call's metadata.
    pub(super) async fn infer_one(
        pipeline: &Pipeline,
        msg: pb::ModelInferRequest,
        headers: &dyn Headers,
        span: Option<&mut ServerSpan>,
    ) -> Result<pb::ModelInferResponse> {
        pipeline.authorize(headers)?;
        let model = msg.model_name.clone();
        let call = Call {
            version: parse_version(&model, &msg.model_version)?,
            model: &model,
            headers,
            span,
        };
        pipeline
            .infer(call, &codec::Codec, std::future::ready(Ok(msg)))
            .await
    }

    fn check_api<T>(&self, req: &tonic::Request<T>) -> Result<()> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.admin.check_api(auth)
    }

    /// Reads of metadata, statistics and the index: open unless `--protect-reads`.
    fn check_read<T>(&self, req: &tonic::Request<T>) -> Result<()> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.admin.check_read(auth)
    }

    /// Admin calls on the gRPC port: with the admin token only (there is no
    /// gRPC admin listener); says who made the call, in the log.
    fn check_admin<T>(&self, req: &tonic::Request<T>, what: &str) -> Result<()> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.admin.check(auth, Port::Public)?;
        let peer = req.extensions().get::<Peer>().map(|p| p.0);
        tracing::info!(
            ?peer,
            caller = "bearer token",
            "admin call over gRPC: {what}"
        );
        Ok(())
    }
}

fn tensor_meta(
    specs: &[crate::core::metadata::TensorSpec],
) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

fn config_type(d: DataType) -> i32 {
    let t = match d {
        DataType::Bool => pb::DataType::TypeBool,
        DataType::U8 => pb::DataType::TypeUint8,
        DataType::U16 => pb::DataType::TypeUint16,
        DataType::U32 => pb::DataType::TypeUint32,
        DataType::U64 => pb::DataType::TypeUint64,
        DataType::I8 => pb::DataType::TypeInt8,
        DataType::I16 => pb::DataType::TypeInt16,
        DataType::I32 => pb::DataType::TypeInt32,
        DataType::I64 => pb::DataType::TypeInt64,
        DataType::F16 => pb::DataType::TypeFp16,
        DataType::F32 => pb::DataType::TypeFp32,
        DataType::F64 => pb::DataType::TypeFp64,
        DataType::BF16 => pb::DataType::TypeBf16,
        DataType::Bytes => pb::DataType::TypeString,
    };
    t as i32
}

fn tally(t: &crate::serving::Tally) -> Option<pb::StatisticDuration> {
    let (count, ns) = t.get();
    Some(pb::StatisticDuration { count, ns })
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: tonic::Request<pb::ServerLiveRequest>,
    ) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: tonic::Request<pb::ServerReadyRequest>,
    ) -> Reply<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: !self.stopping.is_stopping() && self.models.is_loaded(),
        }))
    }

    async fn model_ready(
        &self,
        req: tonic::Request<pb::ModelReadyRequest>,
    ) -> Reply<pb::ModelReadyResponse> {
        let r = req.into_inner();
        let version = parse_version(&r.name, &r.version)?;
        let ready = match self.models.resolve(&r.name, version) {
            Ok(_) => true,
            Err(Error::Unavailable(_)) => false,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        req: tonic::Request<pb::ServerMetadataRequest>,
    ) -> Reply<pb::ServerMetadataResponse> {
        self.check_read(&req)?;
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "switchyard".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::edge::EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: tonic::Request<pb::ModelMetadataRequest>,
    ) -> Reply<pb::ModelMetadataResponse> {
        self.check_read(&req)?;
        let r = req.into_inner();
        let version = parse_version(&r.name, &r.version)?;
        let model = self.models.model(&r.name)?;
        let mv = self.models.resolve(&r.name, version)?;
        let versions = match version {
            Some(v) => vec![v.to_string()],
            None => model
                .ready_versions()
                .map(|v| v.version.to_string())
                .collect(),
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: r.name,
            versions,
            platform: mv.metadata.platform.into(),
            inputs: tensor_meta(&mv.metadata.shown_inputs()),
            outputs: tensor_meta(&mv.metadata.outputs),
        }))
    }

    async fn model_infer(
        &self,
        req: tonic::Request<pb::ModelInferRequest>,
    ) -> Reply<pb::ModelInferResponse> {
        let (metadata, _, msg) = req.into_parts();
        // A caller without the token gets no span: `infer_one` refuses it.
        let span = match self.pipeline.authorize(&metadata) {
            Ok(()) => ServerSpan::grpc(&metadata, "ModelInfer", None),
            Err(_) => None,
        };
        let Some(mut span) = span else {
            let resp = Self::infer_one(&self.pipeline, msg, &metadata, None).await?;
            return Ok(Response::new(resp));
        };
        let answer = Self::infer_one(&self.pipeline, msg, &metadata, Some(&mut span)).await;
        let traceparent = span
            .header()
            .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok());
        let mut answer = answer.map(Response::new).map_err(Status::from);
        span.end_status(answer.as_ref().err());
        if let Some(v) = traceparent {
            match &mut answer {
                Ok(resp) => resp.metadata_mut().insert("traceparent", v),
                Err(status) => status.metadata_mut().insert("traceparent", v),
            };
        }
        answer
    }

    type ModelStreamInferStream = Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = std::result::Result<pb::ModelStreamInferResponse, Status>,
                > + Send,
        >,
    >;

    /// Each request of the stream runs as soon as it arrives, and its answer is sent
    /// when ready (matched by `id`, as Triton's clients do). A failed request is
    /// answered with `error_message` and the stream goes on.
    async fn model_stream_infer(
        &self,
        req: tonic::Request<Streaming<pb::ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        self.check_api(&req)?;
        let (metadata, _, mut incoming) = req.into_parts();
        let headers = Arc::new(StreamHeaders(metadata));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let pipeline = self.pipeline.clone();
        let scope = self.scope.clone();
        self.scope.spawn(async move {
            while let Some(msg) = incoming.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let tx = tx.clone();
                let (pipeline, headers) = (pipeline.clone(), headers.clone());
                scope.spawn(async move {
                    // One span a message: each is a call of its own.
                    let mut span = ServerSpan::grpc(&*headers, "ModelStreamInfer", None);
                    let reply = Self::infer_one(&pipeline, msg, &*headers, span.as_mut()).await;
                    if let Some(span) = span {
                        span.end_status(
                            reply
                                .as_ref()
                                .err()
                                .map(|e| Status::from(e.clone()))
                                .as_ref(),
                        );
                    }
                    let reply = match reply {
                        Ok(r) => pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(r),
                        },
                        Err(e) => pb::ModelStreamInferResponse {
                            error_message: e.to_string(),
                            infer_response: None,
                        },
                    };
                    let _ = tx.send(Ok(reply)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn model_config(
        &self,
        req: tonic::Request<pb::ModelConfigRequest>,
    ) -> Reply<pb::ModelConfigResponse> {
        self.check_read(&req)?;
        let r = req.into_inner();
        let version = parse_version(&r.name, &r.version)?;
        let c = self.models.serving_config(&r.name, version)?;
        let config = pb::ModelConfig {
            name: c.name,
            platform: c.platform.into(),
            backend: c.backend.into(),
            max_batch_size: c.max_batch_size as i32,
            version_policy: Some(pb::ModelVersionPolicy {
                policy_choice: Some(match &c.version_policy {
                    VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest {
                        num_versions: *n as u32,
                    }),
                    VersionPolicy::All => PolicyChoice::All(All {}),
                    VersionPolicy::Specific(v) => PolicyChoice::Specific(Specific {
                        versions: v.iter().map(|&v| v as i64).collect(),
                    }),
                }),
            }),
            input: c
                .inputs
                .into_iter()
                .map(|t| pb::ModelInput {
                    name: t.name,
                    data_type: config_type(t.dtype),
                    dims: t.dims,
                    reshape: t.reshape.map(|shape| pb::ModelTensorReshape { shape }),
                })
                .collect(),
            output: c
                .outputs
                .into_iter()
                .map(|t| pb::ModelOutput {
                    name: t.name,
                    data_type: config_type(t.dtype),
                    dims: t.dims,
                })
                .collect(),
            instance_group: vec![pb::ModelInstanceGroup {
                name: format!("{}_0", r.name),
                count: c.instances as i32,
                gpus: c.gpu.map(|g| vec![g as i32]).unwrap_or_default(),
                kind: if c.gpu.is_some() {
                    pb::model_instance_group::Kind::Gpu as i32
                } else {
                    pb::model_instance_group::Kind::Cpu as i32
                },
            }],
            scheduling_choice: c.dynamic_batching.map(|(preferred, delay)| {
                pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                    preferred_batch_size: preferred.into_iter().map(|p| p as i32).collect(),
                    max_queue_delay_microseconds: delay,
                })
            }),
        };
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        req: tonic::Request<pb::ModelStatisticsRequest>,
    ) -> Reply<pb::ModelStatisticsResponse> {
        self.check_read(&req)?;
        let r = req.into_inner();
        let version = parse_version(&r.name, &r.version)?;
        use std::sync::atomic::Ordering::Relaxed;
        let model_stats = self
            .models
            .versions_for_stats(&r.name, version)?
            .iter()
            .map(|mv| {
                let s = &mv.stats;
                // One read: Triton's clients require the three compute counts to agree.
                let (runs, infer_ns) = s.compute_infer.get();
                pb::ModelStatistics {
                    name: mv.model.to_string(),
                    version: mv.version.to_string(),
                    last_inference: s.last_inference_ms.load(Relaxed),
                    inference_count: s.inference_count.load(Relaxed),
                    execution_count: s.execution_count.load(Relaxed),
                    inference_stats: Some(pb::InferStatistics {
                        success: tally(&s.success),
                        fail: tally(&s.fail),
                        queue: tally(&s.queue),
                        compute_input: Some(pb::StatisticDuration { count: runs, ns: 0 }),
                        compute_infer: Some(pb::StatisticDuration {
                            count: runs,
                            ns: infer_ns,
                        }),
                        compute_output: Some(pb::StatisticDuration { count: runs, ns: 0 }),
                        ..Default::default()
                    }),
                    batch_stats: s
                        .batch_sizes()
                        .map(|(size, count, ns)| {
                            let d = |ns| Some(pb::StatisticDuration { count, ns });
                            pb::InferBatchStatistics {
                                batch_size: size as u64,
                                compute_input: d(0),
                                compute_infer: d(ns),
                                compute_output: d(0),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        req: tonic::Request<pb::RepositoryIndexRequest>,
    ) -> Reply<pb::RepositoryIndexResponse> {
        self.check_read(&req)?;
        let r = req.into_inner();
        let models = self
            .models
            .index(r.ready)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.map(|v| v.to_string()).unwrap_or_default(),
                state: if e.ready { "READY" } else { "UNAVAILABLE" }.into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: tonic::Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        self.check_admin(&req, "load")?;
        self.control.load(&req.into_inner().model_name).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: tonic::Request<pb::RepositoryModelUnloadRequest>,
    ) -> Reply<pb::RepositoryModelUnloadResponse> {
        self.check_admin(&req, "unload")?;
        self.control.unload(&req.into_inner().model_name).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// tonic's own answers to two client mistakes carry statuses that gRPC reserves
/// for other things: a message that does not decode is INTERNAL (INVALID_ARGUMENT
/// here: the client sent it), and a message over the size limit is OUT_OF_RANGE
/// (RESOURCE_EXHAUSTED here, as gRPC's own servers say). The status sits in the
/// headers of a trailers-only answer or in the trailers, so both are rewritten.
fn fix_status(headers: &mut http::HeaderMap) {
    // grpc-message is percent-encoded; the phrases looked for only differ in spaces.
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    let code = match headers.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"13") if message.starts_with("failed to decode Protobuf message") => "3",
        Some(b"11") if message.contains("message length too large") => "8",
        _ => return,
    };
    headers.insert("grpc-status", http::HeaderValue::from_static(code));
}

async fn call(
    mut server: GrpcInferenceServiceServer<InferenceService>,
    req: Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let resp = server
        .call(req)
        .await
        .unwrap_or_else(|e: Infallible| match e {});
    let (mut parts, body) = resp.into_parts();
    fix_status(&mut parts.headers);
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            fix_status(&mut trailers);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

/// Serves gRPC on `listener` until `shutdown` resolves.
pub async fn serve_grpc(
    listener: TcpListener,
    models: Arc<Models>,
    control: crate::control::Control,
    admin: AdminAuth,
    bounds: Bounds,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scope: Scope,
) {
    let max_message = bounds.limits.max_body_bytes;
    let pipeline = Pipeline::new(models.clone(), admin.clone());
    let server = GrpcInferenceServiceServer::new(InferenceService::new(
        models,
        control,
        admin,
        scope.clone(),
        bounds.stopping.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(usize::MAX)
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Deflate);
    let (budget, timeout) = (bounds.budget.clone(), bounds.limits.body_timeout);
    crate::edge::server::serve(
        listener,
        move |peer| {
            let (server, budget, pipeline) = (server.clone(), budget.clone(), pipeline.clone());
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let direct = unary::takes(&req);
                // Length prefixes are checked against the budget as they
                // pass, before a message's declared length is reserved.
                // Every method takes one message but the stream's.
                let unary = !req.uri().path().ends_with("/ModelStreamInfer");
                let mut req = req.map(|body| {
                    GrpcMetered::new(body, budget.clone(), max_message, timeout, unary)
                });
                req.extensions_mut().insert(Peer(peer));
                let (server, pipeline) = (server.clone(), pipeline.clone());
                // A stream lives as long as its client keeps it: not one request.
                let received = unary.then(crate::core::request::Received::enter);
                async move {
                    let answer = if direct {
                        unary::model_infer(&pipeline, req).await.map(Either::Right)
                    } else {
                        let req = req.map(tonic::body::Body::new);
                        call(server, req).await.map(Either::Left)
                    };
                    drop(received);
                    Ok::<_, Infallible>(answer)
                }
            })
        },
        &bounds,
        tls,
        scope,
    )
    .await;
}
