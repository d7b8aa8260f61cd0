//! Compiles `mintgate/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates
//! prost messages and tonic stubs, plus the descriptor set that reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "mintgate/v1/provisioning.proto",
        "mintgate/v1/admin.proto",
        "mintgate/v1/revocation.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("mintgate_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
