//! The hub as operators run it: the CLI and its configuration, TLS and
//! certificate rotation, abuse and overload, dead peers, clock skew, the
//! simulator and the bench.
//!
//! One test binary per concern, each test module a file: `cargo test --test
//! operations <module>::` runs one file's tests.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod bench;
mod cert_rotation;
mod cli;
mod clock_skew;
mod config_cli;
mod dead_peers;
mod overload;
mod simulate;
mod tls;
