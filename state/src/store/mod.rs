//! The storage seam: an ordered key/value store with column families,
//! atomic write batches and cursors.
//!
//! Everything above this module speaks only these traits; only
//! `store/rocks/` names RocksDB. [`MemoryStore`] implements the same
//! contract in memory, and `conformance` runs one suite against both.
//! Contract: a [`KvStore::write`] is atomic (all of a batch or none of it is
//! visible, before and after a crash), and cursors see keys of one column
//! family in bytewise order. A [`KvStore::write_unlogged`] is atomic too, but
//! survives a crash only once flushed, and never lets a later logged write
//! reach the disk before it (see its documentation).

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
mod memory;
pub mod rocks;

pub use memory::MemoryStore;
pub use rocks::{RocksEnv, RocksStore};

/// The column families of one table partition.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Partition metadata and the checkpoint.
    Meta,
    /// Latest value of every live key.
    Latest,
    /// Every retained version of every key, newest first per key.
    History,
    /// The version log: one record per committed version, by version.
    Versions,
    /// One record per commit, by time and version.
    Commits,
}

impl Cf {
    /// All column families, in a fixed order.
    pub const ALL: [Cf; 5] = [Cf::Meta, Cf::Latest, Cf::History, Cf::Versions, Cf::Commits];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "default",
            Cf::Latest => "latest",
            Cf::History => "history",
            Cf::Versions => "versions",
            Cf::Commits => "commits",
        }
    }
}

/// What kind of failure a store reported.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Data failed a checksum or could not be parsed.
    Corruption,
    /// The file system failed.
    Io,
    /// Anything else (options, a busy lock, a closed store).
    Other,
}

/// A failure inside a store implementation, before the table layer adds
/// which table and partition it concerns.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// The kind of failure.
    pub kind: StoreErrorKind,
    /// What the store said.
    pub message: String,
}

/// Result of a store operation.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// An atomic batch of writes.
pub trait KvBatch: Send {
    /// Sets `key` to `value`.
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]);
    /// Removes `key`.
    fn delete(&mut self, cf: Cf, key: &[u8]);
    /// Number of operations in the batch.
    fn len(&self) -> usize;
    /// Whether the batch is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A positioned iterator over one column family.
///
/// After a seek or a step, [`KvCursor::valid`] tells whether it points at an
/// entry; when it does not, [`KvCursor::status`] tells whether it ran off the
/// end or hit an error.
pub trait KvCursor {
    /// Positions at the first key `>= key`.
    fn seek(&mut self, key: &[u8]);
    /// Positions at the last key `<= key`.
    fn seek_for_prev(&mut self, key: &[u8]);
    /// Positions at the first key.
    fn seek_to_first(&mut self);
    /// Positions at the last key.
    fn seek_to_last(&mut self);
    /// Moves to the next key.
    fn next(&mut self);
    /// Moves to the previous key.
    fn prev(&mut self);
    /// Whether the cursor points at an entry.
    fn valid(&self) -> bool;
    /// The current key. Only meaningful while [`KvCursor::valid`].
    fn key(&self) -> &[u8];
    /// The current value. Only meaningful while [`KvCursor::valid`].
    fn value(&self) -> &[u8];
    /// The error that invalidated the cursor, if any.
    fn status(&self) -> StoreResult<()>;
}

/// An ordered key/value store holding one table partition.
pub trait KvStore: Send + Sync + 'static {
    /// The batch type.
    type Batch: KvBatch;
    /// The cursor type.
    type Cursor<'a>: KvCursor
    where
        Self: 'a;

    /// Reads one key.
    fn get(&self, cf: Cf, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;
    /// A new, empty batch.
    fn batch(&self) -> Self::Batch;
    /// A new, empty batch with room for about `bytes` of keys and values,
    /// so a large batch is not copied as it grows.
    fn batch_with_capacity(&self, bytes: usize) -> Self::Batch {
        let _ = bytes;
        self.batch()
    }
    /// Applies a batch atomically.
    fn write(&self, batch: Self::Batch) -> StoreResult<()>;
    /// Applies a batch atomically without logging it: cheaper, but after a
    /// crash it is there only if a [`KvStore::flush`] completed after it.
    /// Stores MUST keep whole batches across a crash (a crash loses a suffix
    /// of the unlogged batches, never part of one), and MUST make unlogged
    /// batches durable before a later [`KvStore::write`] can be: a logged
    /// write never survives a crash that loses an unlogged write made before
    /// it. Restores use it, since their batches can be read again from the
    /// changelog.
    fn write_unlogged(&self, batch: Self::Batch) -> StoreResult<()> {
        self.write(batch)
    }
    /// A cursor over one column family, seeing a consistent snapshot.
    fn cursor(&self, cf: Cf) -> StoreResult<Self::Cursor<'_>>;
    /// Makes everything written so far durable on disk.
    fn flush(&self) -> StoreResult<()>;
    /// Starts making unlogged writes durable without waiting for it (a
    /// background flush). The next logged write, or [`KvStore::flush`],
    /// still waits until they are.
    fn start_flush(&self) -> StoreResult<()> {
        Ok(())
    }
}
