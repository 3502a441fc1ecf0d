//! Helpers shared by Strata's integration tests that need the engine.
//!
//! `strata-testkit` runs the broker and knows nothing of the engine (engine's
//! unit tests may use it); this crate sits on top of the engine, so only
//! integration tests (`tests/` directories) use it, as a dev-dependency:
//!
//! - [`child`]: an app instance run as a child process (the test binary
//!   re-run in "child" mode), stopped through a stop file.
//! - [`produce`]: writing test input to a topic.
//! - [`committed`]: waiting for a consumer group to commit what was produced.
//! - [`sums`]: the sequenced per-key sums workload with its oracle and its
//!   rebuild from the changelog (`tansu_app`, `faults`).
//! - [`words`]: the word counts of the exactly-once tests.
//! - [`grpc`]: the app config and clock of the gRPC tests on the embedded
//!   cluster.

// Test support: a failed step panics with its message, as in the tests it serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

pub mod child;
pub mod committed;
pub mod grpc;
pub mod produce;
pub mod sums;
pub mod words;
