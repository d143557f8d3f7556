//! `ModelInfer` straight from the h2 body to the pipeline and back, without
//! tonic's generic service: the hot call of every gRPC client.
//!
//! Why a path of its own: tonic's unary service reads a message through its
//! streaming decoder into a buffer of its own, then waits for the end of the
//! stream (a client such as tonic's sends it as a frame of its own after the
//! message, a wake-up more per call), boxes the answer through an encoder
//! stream, and the status fix-up maps every frame. Here the message is sliced
//! from the frame it came in (copied only when it spans frames), the call runs
//! as soon as the message is whole, and the answer is one data frame and the
//! trailers. Every other method, and a compressed `ModelInfer`, goes to tonic.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use tonic::Status;

use super::proto as pb;
use super::service::InferenceService;
use crate::edge::limits::GrpcMetered;
use crate::edge::pipeline::Pipeline;
use crate::edge::trace::ServerSpan;

/// The one method this path serves.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Whether `req` is a `ModelInfer` call this path can read: one whose message
/// is not compressed (tonic decompresses the others).
pub(super) fn takes(req: &Request<Incoming>) -> bool {
    req.uri().path() == MODEL_INFER
        && req.method() == http::Method::POST
        && req
            .headers()
            .get("grpc-encoding")
            .is_none_or(|e| e.as_bytes() == b"identity")
}

/// Answers one `ModelInfer` call whose body is `body` (already metered).
pub(super) async fn model_infer(
    pipeline: &Pipeline,
    req: Request<GrpcMetered<Incoming>>,
) -> Response<Answer> {
    let (parts, mut body) = req.into_parts();
    let authority = parts.uri.authority().map(|a| a.as_str());
    // A caller without the token gets no span (as on HTTP): `call` refuses it.
    let mut span = match pipeline.authorize(&parts.headers) {
        Ok(()) => ServerSpan::grpc(&parts.headers, "ModelInfer", authority),
        Err(_) => None,
    };
    let answer = match call(pipeline, &parts.headers, &mut body, span.as_mut()).await {
        // The body failed (refused, past its deadline, reset): that is the answer.
        Err(Failed::Body(status)) => Err(status),
        // An answer sent before the request's end makes h2 reset the stream,
        // which h2's own clients (tonic's) report as a failed call instead of
        // the answer: the end is awaited, by now mostly arrived; a stream
        // that never ends gets the body deadline's status, as tonic gave it.
        answer => match end_of(&mut body).await {
            Err(status) => Err(status),
            Ok(()) => answer.map_err(|(Failed::Body(s) | Failed::Call(s))| s),
        },
    };
    let traceparent = span.as_ref().and_then(ServerSpan::header);
    if let Some(span) = span {
        span.end_status(answer.as_ref().err());
    }
    let mut resp = match answer {
        Ok(msg) => {
            let mut resp = Response::new(Answer::message(&msg));
            resp.headers_mut()
                .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
            resp
        }
        Err(status) => status.into_http(),
    };
    if let Some(v) = traceparent {
        resp.headers_mut().insert("traceparent", v);
    }
    resp
}

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

/// Why a call was not answered with a message.
enum Failed {
    /// The request stream failed: nothing more can be read from it.
    Body(Status),
    /// The call was read and refused.
    Call(Status),
}

/// Reads, decodes and runs the call; its message is run as soon as it is
/// whole, while the end of the stream is on its way.
async fn call(
    pipeline: &Pipeline,
    headers: &HeaderMap,
    body: &mut GrpcMetered<Incoming>,
    span: Option<&mut ServerSpan>,
) -> Result<pb::ModelInferResponse, Failed> {
    // Before the body: a caller without the token sends nothing we keep.
    pipeline
        .authorize(headers)
        .map_err(|e| Failed::Call(e.into()))?;
    let msg = read_message(body).await?;
    // prost's message starts "failed to decode Protobuf message", as tonic's does.
    let msg = pb::ModelInferRequest::decode(msg)
        .map_err(|e| Failed::Call(Status::invalid_argument(e.to_string())))?;
    InferenceService::infer_one(pipeline, msg, headers, span)
        .await
        .map_err(|e| Failed::Call(e.into()))
}

/// Reads to the end of the request stream; what follows the call's one
/// message is dropped, as tonic does.
async fn end_of(body: &mut GrpcMetered<Incoming>) -> Result<(), Status> {
    while let Some(frame) = body.frame().await {
        frame.map_err(body_error)?;
    }
    Ok(())
}

/// Reads the call's one length-prefixed message, and no further.
async fn read_message(body: &mut GrpcMetered<Incoming>) -> Result<Bytes, Failed> {
    // Most messages come in one frame: sliced from it, not copied.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    loop {
        let held = first.as_ref().map_or(joined.len(), Bytes::len);
        if let Some((flag, len)) = prefix(first.as_deref().unwrap_or(&joined[..])) {
            if flag != 0 {
                // `takes` sent every call that names a grpc-encoding to tonic.
                return Err(Failed::Call(Status::invalid_argument(
                    "the message is marked compressed but the call names no grpc-encoding",
                )));
            }
            if held >= 5 + len {
                let mut all = match first {
                    Some(b) => b,
                    None => joined.freeze(),
                };
                all.advance(5);
                all.truncate(len);
                return Ok(all);
            }
        }
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(Failed::Body(body_error(e))),
            None => {
                return Err(Failed::Body(Status::invalid_argument(if held == 0 {
                    "the call carries no request message"
                } else {
                    "the stream ended inside the request message"
                })))
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: nothing to read in them
        };
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.put(data),
            Some(b) => {
                // The whole message's room at once, when its prefix is in.
                if let Some((_, len)) = prefix(&b) {
                    joined.reserve(5 + len);
                }
                joined.put(b);
                joined.put(data);
            }
        }
    }
}

/// The compressed flag and the length of the message that `head` starts
/// with, once its 5-byte prefix is all there.
fn prefix(head: &[u8]) -> Option<(u8, usize)> {
    let [flag, a, b, c, d, ..] = *head else {
        return None;
    };
    Some((flag, u32::from_be_bytes([a, b, c, d]) as usize))
}

/// A body error as the status to answer: the meter's own refusals carry
/// theirs; anything else is the stream failing under the call.
fn body_error(e: Box<dyn std::error::Error + Send + Sync>) -> Status {
    match e.downcast::<Status>() {
        Ok(status) => *status,
        Err(e) => Status::cancelled(format!("the request stream failed: {e}")),
    }
}

/// The answer's body: one length-prefixed message, then `grpc-status: 0`; or
/// nothing at all (the default: a trailers-only answer carries its status in
/// the headers).
#[derive(Default)]
pub struct Answer {
    message: Option<Bytes>,
    /// The trailers are still to send.
    trailers: bool,
}

impl Answer {
    fn message(msg: &pb::ModelInferResponse) -> Answer {
        let len = msg.encoded_len();
        let mut buf = BytesMut::with_capacity(5 + len);
        buf.put_u8(0);
        buf.put_u32(len as u32);
        // Cannot fail: the buffer holds encoded_len bytes.
        let _ = msg.encode(&mut buf);
        Answer {
            message: Some(buf.freeze()),
            trailers: true,
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if !std::mem::take(&mut this.trailers) {
            return Poll::Ready(None);
        }
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && !self.trailers
    }

    // No exact size_hint: hyper would send it as content-length, which no
    // gRPC server sends (the trailers follow the data).
}
