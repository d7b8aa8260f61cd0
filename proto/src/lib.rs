//! Mintgate's gRPC contract, package `mintgate.v1`, generated at build time.

/// `mintgate.v1`: Provisioning, Admin (and later Revocation).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mintgate.v1");
}

/// The encoded `FileDescriptorSet` of `mintgate.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mintgate_descriptor.bin"));
