//! # Learning Hub — the server
//!
//! A gRPC service where a fleet of self-improving ML/agent instances shares
//! what it learns and asks for collective knowledge. This crate is the
//! server; the layers, from the wire inwards:
//!
//! - [`server`]: `run(listener, config, shutdown)` wires TLS, limits,
//!   health, reflection and the services, and drains on shutdown.
//! - [`transport`]: accepts TCP, completes the mTLS handshake within its
//!   budget, reads the caller's identity from its certificate.
//! - [`overload`]: past a bound on calls in progress, calls are refused at
//!   once rather than queued.
//! - [`tls`]: the certificates the handshakes use, reloaded while serving;
//!   client certificate revocation.
//! - [`auth`]: one tower layer turns the connection's certificate into an
//!   [`auth::Identity`] on every request, checks keys, roles and the rate
//!   limit, and audits every call.
//! - [`api`]: thin gRPC handlers: validate and convert, call the hub core,
//!   convert back.
//! - [`compute`]: the threads queries compute on.
//! - [`hub`]: the core: builds commands, a single writer that folds and
//!   logs them in group commits, queries over published snapshots.
//! - [`stream`]: insight fan-out with replay and catch-up.
//! - [`jobs`]: background jobs (insight generation, retention).
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`settings`] and [`config`]: the operator's configuration in layers.
//! - [`pki`]: the development certificates.
//!
//! Below it: [`domain`] (plain records, the commands and their fold),
//! [`store`] (the command log and checkpoints behind a backend trait) and
//! the generated contract [`pb`].

pub mod api;
pub mod auth;
pub mod compute;
pub mod config;
pub mod dashboard;
pub mod federation;
pub mod gateway;
pub mod hub;
pub mod jobs;
pub mod log_limit;
pub mod metrics;
pub mod migrate;
pub mod overload;
pub mod pki;
pub mod server;
pub mod settings;
pub mod stream;
pub mod tls;
pub mod transport;

pub use learning_hub_domain as domain;
pub use learning_hub_domain::{clock, error, validate};
pub use learning_hub_proto::{pb, schema};
pub use learning_hub_store as store;

pub use error::{Error, Result};
