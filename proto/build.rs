//! Compiles `mintgate/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates
//! prost messages and tonic stubs, plus the descriptor set that reflection serves.
//!
//! The server side of `Revocation` is generated a second time by hand (see `fanout` in
//! `src/lib.rs`) so that `WatchRevocations` can send events encoded once for every subscriber.

use std::path::PathBuf;

use tonic_build::manual::{Builder, Method, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "mintgate/v1/provisioning.proto",
        "mintgate/v1/admin.proto",
        "mintgate/v1/revocation.proto",
        "spiffe/workload.proto",
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
    // Every call's codec starts with small buffers (see `LeanCodec` in `src/lib.rs`).
    tonic_prost_build::configure()
        .codec_path("crate::LeanCodec")
        .compile_fds(fds)?;

    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::v1::{input}"))
            .output_type(output)
            .codec_path("crate::LeanCodec")
    };
    let revocation = Service::builder()
        .name("Revocation")
        .package("mintgate.v1")
        .method(
            method(
                "revoke",
                "Revoke",
                "RevokeRequest",
                "crate::v1::RevokeResponse",
            )
            .build(),
        )
        .method(
            method(
                "check_status",
                "CheckStatus",
                "CheckStatusRequest",
                "crate::v1::CheckStatusResponse",
            )
            .build(),
        )
        .method(
            method(
                "watch_revocations",
                "WatchRevocations",
                "WatchRevocationsRequest",
                "crate::fanout::WatchRevocationsFrame",
            )
            .server_streaming()
            .build(),
        )
        .method(
            method(
                "revoke_identity",
                "RevokeIdentity",
                "RevokeIdentityRequest",
                "crate::v1::RevokeIdentityResponse",
            )
            .build(),
        )
        .method(
            method(
                "unblock_identity",
                "UnblockIdentity",
                "UnblockIdentityRequest",
                "crate::v1::UnblockIdentityResponse",
            )
            .build(),
        )
        .method(
            method(
                "revoke_issuer",
                "RevokeIssuer",
                "RevokeIssuerRequest",
                "crate::v1::RevokeIssuerResponse",
            )
            .build(),
        )
        .method(
            method(
                "watch_trust_bundle",
                "WatchTrustBundle",
                "WatchTrustBundleRequest",
                "crate::v1::TrustBundle",
            )
            .server_streaming()
            .build(),
        )
        .build();
    Builder::new().build_client(false).compile(&[revocation]);
    Ok(())
}
