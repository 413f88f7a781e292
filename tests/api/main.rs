//! The hub's API as clients meet it: every RPC, validation, access control, the
//! insight stream, idempotent retries, ranking and its statistics, metrics and
//! operations over gRPC.
//!
//! One test binary per concern, each test module a file: `cargo test --test api
//! <module>::` runs one file's tests.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod bad_input;
mod clients;
mod combination_properties;
mod dashboard;
mod federated;
mod gateway;
mod idempotency;
mod insight_golden;
mod intelligence;
mod metrics;
mod ops;
mod ranking_statistics;
mod regions;
mod rpc;
mod stream;
mod validation_properties;
