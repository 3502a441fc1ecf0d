//! The Strata engine: Kafka streams into changelog-replicated, versioned
//! tables, processed by partition-affine tasks.
//!
//! Declare a [`Topology`] of typed streams and tables; run it with the app
//! runtime against Kafka, or with the [`TestDriver`] in unit tests.

#![warn(missing_docs)]

pub mod context;
pub mod driver;
mod error;
pub mod kafka;
pub mod partitioner;
pub mod serde;
mod task;
pub mod topology;

pub use context::{Ctx, OutRecord, RecordMeta};
pub use driver::TestDriver;
pub use error::{Error, Result};
pub use task::{ERROR_HEADER, TaskStats};
pub use topology::{OnError, Stream, Table, TableId, TableOptions, Topology};
