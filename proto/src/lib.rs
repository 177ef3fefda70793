//! The faultline.v1 wire contract, generated from `faultline/v1/*.proto` at build time
//! and kept apart from hand-written code. The agent maps its own types to these in
//! `agent/src/feed/`.

/// Generated code: no lints of ours apply.
#[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
pub mod v1 {
    tonic::include_proto!("faultline.v1");
}

/// The standard health protocol, with List (tonic-health's has no List).
#[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// gobgpd's API v3 (package apipb), only what `faultline announce` calls.
#[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
pub mod gobgp {
    tonic::include_proto!("apipb");
}

/// The encoded descriptor set of every service here, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");

// prost-types backs google.protobuf.Timestamp inside the generated code.
use prost_types as _;
