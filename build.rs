//! Compiles krab's own gRPC protocols (Raft peer transport). The etcd v3 protocol comes
//! compiled from the `etcd-client` crate.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/peer.proto"], &["proto"])?;
    Ok(())
}
