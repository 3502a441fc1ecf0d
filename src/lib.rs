//! Strata: stateful stream processing over Kafka into tables that remember
//! every version.
//!
//! This facade composes the crates: the engine ([`strata_engine`]:
//! topologies, tasks, the runtime, the test driver) re-exported at the top
//! level, its gRPC query server ([`query`]) started by [`App`], the Kafka
//! layer as [`kafka`] and the versioned store as [`state`]. See
//! `examples/quickstart.rs` for a complete app.

mod app;

pub use app::{App, RunningApp};
pub use strata_engine::*;
pub use strata_proto as proto;
pub use strata_query as query;
pub use strata_state as state;
