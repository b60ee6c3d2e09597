//! Compiles the CRI subset without a system `protoc` (protox).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/runtime/v1/cri.proto";
    let descriptors = protox::compile([file], ["proto"])?;
    // The server half serves the fake runtime in this crate's tests.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed={file}");
    Ok(())
}
