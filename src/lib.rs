//! # Learning Hub
//!
//! A gRPC service where a fleet of self-improving ML/agent instances shares
//! what it learns — plateau patterns, strategy outcomes, insights, failures,
//! configurations — and asks for collective knowledge: ranked strategy
//! recommendations, matching patterns, failure warnings, the best known
//! configuration. New insights are pushed to subscribers over a resumable
//! stream. Everything travels over mutual TLS; every write is a command in
//! a durable log.
//!
//! This crate gathers the workspace's crates under one name (the
//! `learning-hub` binary and the integration tests use it); each layer is a
//! crate of its own, so that the compiler keeps the dependencies pointing
//! one way (ARCHITECTURE.md):
//!
//! - [`pb`] (`learning-hub-proto`): the contract, generated from `proto/`;
//! - [`client`] (`learning-hub-client`): what an instance in Rust links;
//! - [`domain`] (`learning-hub-domain`): records, commands, the fold;
//! - [`store`] (`learning-hub-store`): the command log and checkpoints;
//! - the server (`learning-hub-server`), re-exported here whole: [`server`],
//!   [`hub`], [`api`], [`auth`], [`transport`] …;
//! - [`sim`] (`learning-hub-sim`) and [`bench`] (`learning-hub-bench`):
//!   what the hub is worth, and what it costs.

pub use learning_hub_bench as bench;
pub use learning_hub_client as client;
pub use learning_hub_server::*;
pub use learning_hub_sim as sim;
