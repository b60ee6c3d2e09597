//! Compiles the Parca `.proto` files without a system `protoc` (protox).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/parca/profilestore/v1alpha1/profilestore.proto",
        "proto/parca/debuginfo/v1alpha1/debuginfo.proto",
        "proto/parca/telemetry/v1alpha1/telemetry.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
