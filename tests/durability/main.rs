//! What the hub keeps: the command log and its checkpoints, the storage
//! conformance suite every backend passes, the fold's determinism, crashes,
//! disk faults and the stream's guarantees across restarts.
//!
//! One test binary per concern, each test module a file: `cargo test --test
//! durability <module>::` runs one file's tests.

#[path = "../common/mod.rs"]
mod common;

mod checkpoints;
mod crash_durability;
mod disk_faults;
mod durability;
mod fold_determinism;
mod replica_kills;
mod replicas;
mod shared_log;
mod store_conformance;
mod stream_guarantees;
