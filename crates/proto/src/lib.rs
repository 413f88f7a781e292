//! The Learning Hub's gRPC contract as Rust: the messages and stubs of
//! `learninghub.v1` generated from `proto/` ([`pb`]), the wire codec they
//! use ([`codec`]: a request that does not decode, or repeats a field far
//! past any rule, is the sender's fault and says so), and the API's shape
//! read from the descriptor set ([`schema`]: the closed set of RPC names).
//! Clients and the server both build on this crate, and on nothing of each
//! other.

pub mod codec;
pub mod plateau;
pub mod schema;

/// The generated protobuf messages and gRPC stubs of `learninghub.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("learninghub.v1");

    /// The encoded descriptor set of `proto/`, with documentation, served by
    /// gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/learninghub_descriptor.bin"));
}

/// In `--insecure-dev` mode only: the metadata header that says which
/// instance a plaintext caller is. Without it the caller is an operator.
pub const INSECURE_IDENTITY_HEADER: &str = "x-learning-hub-instance";
