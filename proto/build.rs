//! Generates the Rust types for `proto/*.proto`. The tonic services are emitted
//! only with the `grpc` feature, so the Wasm filter links the messages alone.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "sidestream/config/v1/discovery.proto",
        "sidestream/push/v1/push.proto",
        "sidestream/limits/v1/limits.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .bytes(".sidestream.push.v1")
        .build_client(grpc)
        .build_server(grpc)
        .compile_protos(&protos, &["."])?;
    Ok(())
}
