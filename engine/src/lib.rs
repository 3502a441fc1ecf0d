//! The Strata engine: Kafka streams into changelog-replicated, versioned
//! tables, processed by partition-affine tasks.
//!
//! Declare a [`Topology`] of typed streams and tables; run it against Kafka
//! with an [`App`], or deterministically with the [`TestDriver`] in unit
//! tests.

#![warn(missing_docs)]

pub mod config;
pub mod context;
pub mod directory;
pub mod driver;
pub mod embedded;
mod error;
pub mod partitioner;
pub mod registry;
pub mod replay;
mod runtime;
pub mod serde;
mod task;
pub mod topology;

pub use config::{AppConfig, Guarantee, QueryConfig, StartPosition};
pub use context::{Ctx, OutRecord, RecordMeta};
pub use directory::{Directory, DirectorySnapshot, Member, Owner};
pub use driver::TestDriver;
pub use embedded::EmbeddedKafka;
pub use error::{Error, Result};
pub use registry::{PartitionState, Registry};
pub use replay::{ReplayOutcome, ReplayProgress, ReplayState, TopicPosition};
pub use runtime::keyroute;
pub use runtime::{App, AppHandle, RunningApp, TableMeta, advertised_endpoint};
/// The Kafka layer (re-exported: its configuration is part of
/// [`AppConfig`], and tools produce input through it).
pub use strata_kafka as kafka;
pub use task::{ERROR_HEADER, TaskStats};
pub use topology::{OnError, Stream, Table, TableId, TableOptions, Topology};
