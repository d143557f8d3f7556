//! gRPC through tonic's generated client: what the Python clients cannot show,
//! such as the server's own handling of `grpc-timeout`.

mod common;

use bytes::Bytes;
use common::{sample_models, Server};
use switchyard::edge::grpc::proto as pb;
use switchyard::edge::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;

fn input(name: &str, dtype: &str, shape: Vec<i64>) -> pb::model_infer_request::InferInputTensor {
    pb::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: dtype.into(),
        shape,
        ..Default::default()
    }
}

/// A request for `mixed` with `n` rows: large enough to take far longer than 1 ms.
fn big_mixed(n: usize) -> pb::ModelInferRequest {
    let tags: Vec<u8> = (0..n)
        .flat_map(|i| {
            let s = format!("tag-{i}");
            let mut e = (s.len() as u32).to_le_bytes().to_vec();
            e.extend_from_slice(s.as_bytes());
            e
        })
        .collect();
    pb::ModelInferRequest {
        model_name: "mixed".into(),
        inputs: vec![
            input("features", "FP32", vec![n as i64, 3]),
            input("counts", "INT64", vec![n as i64, 3]),
            input("scale", "FP64", vec![]),
            input("tag", "BYTES", vec![n as i64]),
        ],
        raw_input_contents: vec![
            Bytes::from(vec![0u8; n * 12]),
            Bytes::from(vec![0u8; n * 24]),
            Bytes::from(1.0f64.to_le_bytes().to_vec()),
            Bytes::from(tags),
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_honours_grpc_timeout() {
    let s = tokio::task::spawn_blocking(|| Server::start(&sample_models(), &[]))
        .await
        .unwrap();
    let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    // tonic's and grpcio's clients keep the deadline themselves as well, so the
    // call goes out over plain HTTP/2 with only the header: the server must keep it.
    let (status, message) =
        common::grpc_raw_call(&s.grpc, &big_mixed(300_000), &[("grpc-timeout", "1m")]).await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(message.contains("deadline"), "{message}");
    // Without a deadline the same request is answered.
    let ok = c.model_infer(big_mixed(1000)).await.unwrap().into_inner();
    assert_eq!(ok.outputs.len(), 4);
    assert_eq!(ok.raw_output_contents.len(), 4, "raw in, raw out");
    // A malformed timeout is the client's mistake.
    let mut req = tonic::Request::new(big_mixed(1));
    req.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    drop(s);
}
