//! The hub's knowledge as plain Rust: records ([`model`]), the statistics
//! they are built from ([`stats`]), the state they make up ([`state`]), the
//! commands that change it ([`command`]) and the one pure function that
//! applies them ([`fold`]), and the pure logic that answers queries
//! ([`matching`], [`recommend`], [`prevention`], [`bootstrap`],
//! [`insight_gen`], [`retention`], [`idempotency`]). Nothing here does I/O
//! or knows about gRPC, so all of it is unit-tested directly.

pub mod bootstrap;
pub mod command;
pub mod fold;
pub mod idempotency;
pub mod insight_gen;
pub mod matching;
pub mod model;
pub mod prevention;
pub mod recommend;
pub mod retention;
pub mod rng;
pub mod state;
pub mod stats;
