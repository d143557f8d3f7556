//! Compiles the gRPC definitions with protox (pure Rust): no `protoc` on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `bytes` fields as `Bytes`: raw tensor contents are sliced, not copied.
        .bytes(".inference")
        .compile_fds(fds)?;
    // The policy store's etcd client (control::etcd): a client only.
    let etcd = "proto/etcd.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
