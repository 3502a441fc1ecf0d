//! Everything in Strata that speaks Kafka, and the only crate that names
//! `rdkafka`: client configuration (every consumer and producer setting),
//! topic administration, the acknowledged producer shared by changelogs,
//! outputs and transactions, the changelog writer and reader, the
//! exactly-once protocol (fencing, markers, transactional commits), the
//! consumer group (its poll loop reports [`group::GroupEvents`]), input
//! queues, the owner directory's clients and the embedded cluster.
//!
//! No `rdkafka` type appears in a public signature: errors are
//! [`Error`], records are [`OutRecord`] out and [`group::Input`] in.

#![warn(missing_docs)]

use std::sync::Arc;

pub mod admin;
pub mod changelog;
pub mod client;
pub mod directory;
pub mod embedded;
mod error;
pub mod group;
pub mod output;
pub mod producer;
pub mod transactions;
pub mod txn;

pub use error::{ClientError, Error, Result};

/// A record to produce: to an output topic, a dead-letter topic, or an
/// input topic (tests and tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRecord {
    /// Logical topic name.
    pub topic: Arc<str>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}
