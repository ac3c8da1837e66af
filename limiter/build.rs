//! Generates the server (and, for tests, the client) of Envoy's rate limit
//! service from the wire-compatible subset in `proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "envoy/service/ratelimit/v3/rls.proto";
    println!("cargo:rerun-if-changed=proto/{proto}");
    tonic_prost_build::configure().compile_protos(&[proto], &["proto"])?;
    Ok(())
}
