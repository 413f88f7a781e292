//! The hub's knowledge as plain Rust: records ([`model`]), the statistics
//! they are built from ([`stats`]), the state they make up ([`state`]), the
//! commands that change it ([`command`]) and the one pure function that
//! applies them ([`fold`]), and the pure logic that answers queries
//! ([`matching`], [`recommend`], [`influence`], [`anomaly`], [`recovery`], [`federated`], [`prevention`], [`bootstrap`],
//! [`insight_gen`], [`retention`], [`idempotency`]), and [`digest`] and
//! [`knowledge`]: the mergeable knowledge regional hubs exchange. Nothing here does I/O
//! or knows about gRPC (but for the one conversion of its [`error::Error`]
//! into a gRPC status), so all of it is unit-tested directly. Also here:
//! [`clock`] (time as an injected dependency), [`validate`] (the input
//! rules), [`identity`] and [`keys`] (who calls, and their API keys).

pub mod anomaly;
pub mod bootstrap;
pub mod clock;
pub mod command;
pub mod digest;
pub mod error;
pub mod federated;
pub mod fold;
pub mod idempotency;
pub mod identity;
pub mod influence;
pub mod insight_gen;
pub mod keys;
pub mod knowledge;
pub mod matching;
pub mod model;
pub mod prevention;
pub mod recommend;
pub mod recovery;
pub mod retention;
pub mod rng;
pub mod state;
pub mod stats;
pub mod validate;

pub use error::{Error, Result};
