//! Shepherd's wire contract, package `shepherd.v1`, and the pieces the control
//! plane and the agent must compute identically.
//!
//! - [`v1`]: prost messages, tonic clients and servers, and serde impls that
//!   follow the protobuf JSON mapping (so a policy file, grpcurl's JSON and the
//!   stored form are one format).
//! - [`validate`]: every rule a [`v1::Policy`] must satisfy, with errors that
//!   name the field path and the rule.
//! - [`cost`]: prices and costs in exact integer arithmetic.
//! - [`file`]: the policies of a policy file (one or a list), read with
//!   errors that name the field path.
//! - [`histogram`]: latency histograms with shared bucket boundaries, so the
//!   agent records and the control plane computes quantiles identically.
//! - [`telemetry`]: telemetry reports on the wire, and merging them.
//! - [`prometheus`]: the Prometheus text format of both `/metrics`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors for gRPC reflection.

pub mod cost;
pub mod file;
pub mod histogram;
pub mod prometheus;
pub mod telemetry;
pub mod validate;

/// The `shepherd.v1` package.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/shepherd.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/shepherd.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of the contract and its imports, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shepherd_descriptor.bin"));
