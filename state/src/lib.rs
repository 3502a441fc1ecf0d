//! Versioned, retention-bounded key/value tables: the storage heart of
//! Strata.
//!
//! A [`TablePartition`] is one partition of a table. Its owner stages
//! mutations and commits them in batches; each committed mutation becomes a
//! [`Version`] (dense and strictly increasing within the partition) with a
//! commit time, lineage and flags. Readers ([`PartitionReader`]) see
//! committed versions only: latest, at a version, as of a time, a key's
//! history, scans, diffs. A rewind brings a partition (or a key range) back
//! to an earlier state as new versions flagged as a rewind.
//!
//! Storage sits behind the [`store::KvStore`] seam: RocksDB
//! ([`store::RocksStore`]) in production, [`store::MemoryStore`] in tests.
//! This crate knows nothing of Kafka; the engine replicates commits through
//! the [`changelog`] traits.
//!
//! ```
//! use strata_state::{At, Partition, TableConfig, TableName, TablePartition, Timestamp};
//! use strata_state::store::MemoryStore;
//!
//! let config = TableConfig::new(TableName::new("balances")?, Partition(0));
//! let mut table = TablePartition::open(MemoryStore::new(), config)?;
//! table.put(b"alice", b"10", None);
//! let first = table.commit(Timestamp(1_000), &[])?;
//! table.put(b"alice", b"25", None);
//! table.commit(Timestamp(2_000), &[])?;
//!
//! let reader = table.reader();
//! assert_eq!(reader.get(b"alice")?.unwrap().value, b"25");
//! let then = reader.get_at(b"alice", At::Version(*first.versions.end()))?.unwrap();
//! assert_eq!(then.value, b"10");
//! assert_eq!(reader.get_at(b"alice", At::Time(Timestamp(1_500)))?.unwrap().value, b"10");
//!
//! table.rewind(At::Time(Timestamp(1_500)), &strata_state::KeyRange::all())?;
//! table.commit(Timestamp(3_000), &[])?;
//! let now = reader.get(b"alice")?.unwrap();
//! assert_eq!(now.value, b"10");
//! assert!(now.flags.is_rewind());
//! # Ok::<(), strata_state::Error>(())
//! ```

#![warn(missing_docs)]

pub mod changelog;
pub mod codec;
mod config;
mod error;
pub mod layout;
pub mod store;
mod table;
mod typed;
mod types;

pub use changelog::{
    ChangeRecord, ChangelogReader, ChangelogWriter, MemoryChangelog, RestoreProgress,
};
pub use config::{Granularity, Retention, TableConfig};
pub use error::{Error, Location, Point, Result};
pub use table::{
    At, Checkpoint, CommitSummary, DiffEntry, History, HistoryEntry, HistoryQuery, KeyRange, Order,
    PartitionReader, PreparedCommit, PruneReport, RestoreStep, RewindPlan, ScanPage, ScanRequest,
    ScanToken, TablePartition, Versioned,
};
pub use typed::{Table, TableReader, TypedVersioned};
pub use types::{
    ChangelogPosition, InputOffset, InvalidTableName, Lineage, Offset, Partition, Rfc3339,
    TableName, Timestamp, Version, VersionFlags,
};
