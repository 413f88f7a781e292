//! # Learning Hub
//!
//! A gRPC service where a fleet of self-improving ML/agent instances shares
//! what it learns — plateau patterns, strategy outcomes, insights, failures,
//! configurations — and asks for collective knowledge: ranked strategy
//! recommendations, matching patterns, failure warnings, the best known
//! configuration. New insights are pushed to subscribers over a resumable
//! stream. Everything travels over mutual TLS; sled keeps it durable.
//!
//! The crate is a library first; the `learning-hub` binary only parses its
//! arguments and calls in. The layers, from the wire inwards:
//!
//! - [`server`]: `run(listener, config, shutdown)` wires TLS, limits,
//!   health, reflection and the services, and drains on shutdown.
//! - [`transport`]: accepts TCP, completes the mTLS handshake, reads the
//!   caller's identity from its certificate.
//! - [`overload`]: past a bound on calls in progress, calls are refused at
//!   once rather than queued.
//! - [`tls`]: the certificates the handshakes use, reloaded while serving;
//!   client certificate revocation.
//! - [`auth`]: one tower layer turns that into an [`auth::Identity`] on
//!   every request and applies the role policy.
//! - [`api`]: thin gRPC handlers: validate and convert, call the hub core,
//!   convert back.
//! - [`compute`]: the threads queries compute on, so the runtime's
//!   threads stay free to read requests and refuse what is too much.
//! - [`hub`]: the core: in-memory state, a single writer with group commit,
//!   the operations of each area.
//! - [`domain`]: plain records and the pure logic on them.
//! - [`store`]: durable records over a key-value [`store::Engine`] (sled).
//! - [`stream`]: insight fan-out with replay and catch-up.
//! - [`jobs`]: background jobs (insight generation).
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`settings`]: the operator's configuration in layers (defaults, TOML
//!   file, environment, flags), checked key by key.
//! - [`client`]: a Rust client for instances, with a resuming subscription.
//! - [`pki`]: the development certificates.
//! - [`sim`]: the fleet simulator that measures what the hub is worth.
//! - [`bench`]: the load generator that measures what the hub costs.

pub mod api;
pub mod auth;
pub mod bench;
pub mod client;
pub mod clock;
pub mod compute;
pub mod config;
pub mod domain;
pub mod error;
pub mod hub;
pub mod jobs;
pub mod log_limit;
pub mod metrics;
pub mod overload;
pub mod pki;
pub mod schema;
pub mod server;
pub mod settings;
pub mod sim;
pub mod store;
pub mod stream;
pub mod tls;
pub mod transport;
pub mod validate;

/// The generated protobuf messages and gRPC stubs of `learninghub.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("learninghub.v1");

    /// The encoded descriptor set of `proto/`, with documentation, served by
    /// gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/learninghub_descriptor.bin"));
}

pub use error::{Error, Result};
