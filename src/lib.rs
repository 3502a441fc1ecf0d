//! Strata: stateful stream processing over Kafka into tables that remember
//! every version.
//!
//! This facade re-exports the engine (topologies, the app runtime, the
//! test driver) at the top level and the versioned store as [`state`].
//! See `examples/quickstart.rs` for a complete app.

pub use strata_engine::*;
pub use strata_proto as proto;
pub use strata_state as state;
