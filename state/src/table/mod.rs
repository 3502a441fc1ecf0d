//! A table partition: the versioned key/value map owned by one task.
//!
//! The owner stages mutations ([`TablePartition::put`],
//! [`TablePartition::delete`]) and commits them in batches. A commit assigns
//! each mutation the next version and writes values, history, the version
//! log and the checkpoint in one atomic store write; readers
//! ([`PartitionReader`]) see committed versions only, and only after the
//! write (the published watermark is advanced after it).
//!
//! Commits are two-phase so the engine can put a changelog in the middle:
//! [`TablePartition::prepare`] fixes versions and commit time and returns the
//! records to replicate; [`TablePartition::apply`] writes them with their
//! changelog offsets. [`TablePartition::commit`] does both without a
//! changelog.

mod cache;
mod read;
mod restore;
mod retention;
mod rewind;
mod scan;
mod stage;
mod write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use read::{At, History, HistoryEntry, HistoryQuery, Order, PartitionReader, Versioned};
pub use retention::PruneReport;
pub use rewind::{DiffEntry, RewindPlan};
pub use scan::{KeyRange, ScanPage, ScanRequest, ScanToken};
pub use write::{CommitSummary, PreparedCommit, RestoreStep};

use crate::config::{Retention, TableConfig};
use crate::error::Location;
use crate::layout::{self, PartitionMeta, PruneState, meta};
use crate::store::{Cf, KvCursor, KvStore, StoreError, StoreErrorKind};
use crate::types::{ChangelogPosition, InputOffset, Timestamp, Version};
use crate::{Error, Result};

use stage::Staging;

/// What a table partition has durably applied: written atomically with the
/// data it describes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last committed version.
    pub version: Version,
    /// Its commit time.
    pub time: Timestamp,
    /// The changelog position of the last version that has one.
    pub changelog: Option<ChangelogPosition>,
    /// The input positions the data reflects.
    pub inputs: Vec<InputOffset>,
}

/// State shared between the owner and its readers.
pub(crate) struct Shared<S> {
    pub store: S,
    pub loc: Location,
    /// Latest committed version; published after the store write.
    pub latest: AtomicU64,
    /// Commit time of the latest version.
    pub last_time: AtomicU64,
    /// Versions below this are gone from the version log.
    pub floor: AtomicU64,
    // A lock rather than a message: readers on query threads consult the
    // policy on every historical read, and it changes only on an explicit
    // `set_retention`, so contention is nil.
    pub retention: RwLock<Retention>,
}

impl<S: KvStore> Shared<S> {
    pub fn latest(&self) -> Version {
        Version(self.latest.load(Ordering::Acquire))
    }

    pub fn last_time(&self) -> Timestamp {
        Timestamp(self.last_time.load(Ordering::Acquire))
    }

    pub fn retention(&self) -> Retention {
        self.retention
            .read()
            .map(|r| *r)
            .unwrap_or(Retention::Unlimited)
    }

    pub fn loc(&self) -> Box<Location> {
        Box::new(self.loc.clone())
    }

    pub fn store_err(&self, e: StoreError, key: Option<&[u8]>) -> Error {
        match e.kind {
            StoreErrorKind::Corruption => Error::Corrupt {
                location: self.loc(),
                key: key.map(<[u8]>::to_vec),
                detail: e.message,
            },
            _ => Error::Storage {
                location: self.loc(),
                message: e.message,
            },
        }
    }

    pub fn corrupt(&self, key: Option<&[u8]>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            location: self.loc(),
            key: key.map(<[u8]>::to_vec),
            detail: detail.into(),
        }
    }

    pub fn cursor(&self, cf: Cf) -> Result<S::Cursor<'_>> {
        self.store.cursor(cf).map_err(|e| self.store_err(e, None))
    }

    pub fn cursor_status(&self, c: &S::Cursor<'_>, key: Option<&[u8]>) -> Result<()> {
        c.status().map_err(|e| self.store_err(e, key))
    }
}

/// One partition of a table, owned by one task.
pub struct TablePartition<S: KvStore> {
    shared: Arc<Shared<S>>,
    config: TableConfig,
    staging: Staging,
    checkpoint: Checkpoint,
    prune: PruneState,
    /// First version of the commit prepared and not yet applied.
    prepared: Option<Version>,
    /// The owner's cache of committed latest values (`None`: absent).
    cache: Option<cache::LatestCache>,
    /// Set when a changelog append failed with an unknown outcome: its
    /// records may have landed, so versions must not be reused until the
    /// partition has caught up with the changelog.
    needs_restore: bool,
}

impl<S: KvStore> std::fmt::Debug for TablePartition<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TablePartition")
            .field("location", &self.shared.loc)
            .field("checkpoint", &self.checkpoint)
            .field("staged", &self.staging.len())
            .finish()
    }
}

impl TablePartition<crate::store::RocksStore> {
    /// Opens (creating if missing) the RocksDB-backed partition at `path`.
    /// Failures to open the files name the table and partition.
    pub fn open_rocks(
        path: impl AsRef<std::path::Path>,
        env: &crate::store::RocksEnv,
        config: TableConfig,
    ) -> Result<TablePartition<crate::store::RocksStore>> {
        let loc = Box::new(Location {
            table: config.name.clone(),
            partition: config.partition,
        });
        let store =
            crate::store::RocksStore::open(path.as_ref(), env).map_err(|e| match e.kind {
                StoreErrorKind::Corruption => Error::Corrupt {
                    location: loc.clone(),
                    key: None,
                    detail: format!("{} ({})", e.message, path.as_ref().display()),
                },
                _ => Error::Storage {
                    location: loc.clone(),
                    message: format!("{} ({})", e.message, path.as_ref().display()),
                },
            })?;
        TablePartition::open(store, config)
    }
}

impl<S: KvStore> TablePartition<S> {
    /// Opens the partition held by `store`, initialising an empty store.
    ///
    /// Fails if the store belongs to another table or partition, or if its
    /// metadata is corrupt. A retention in `config` different from the
    /// stored one replaces it.
    pub fn open(store: S, config: TableConfig) -> Result<TablePartition<S>> {
        config.validate()?;
        let loc = Location {
            table: config.name.clone(),
            partition: config.partition,
        };
        let shared = Shared {
            store,
            loc,
            latest: AtomicU64::new(0),
            last_time: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            retention: RwLock::new(config.retention),
        };
        let read_meta = |key: &[u8]| {
            shared
                .store
                .get(Cf::Meta, key)
                .map_err(|e| shared.store_err(e, None))
        };
        let identity = PartitionMeta {
            table: config.name.as_str().to_string(),
            partition: config.partition.0,
        };
        let mut init = shared.store.batch();
        match read_meta(meta::PARTITION)? {
            Some(bytes) => {
                let found: PartitionMeta =
                    layout::open_meta(&bytes).map_err(|d| shared.corrupt(None, d))?;
                if found != identity {
                    return Err(Error::Protocol {
                        location: shared.loc(),
                        reason: format!(
                            "the store holds table {} partition {}; open the right directory or delete this one",
                            found.table, found.partition
                        ),
                    });
                }
            }
            None => crate::store::KvBatch::put(
                &mut init,
                Cf::Meta,
                meta::PARTITION,
                &layout::seal_meta(&identity),
            ),
        }
        let checkpoint: Checkpoint = match read_meta(meta::CHECKPOINT)? {
            Some(b) => layout::open_meta(&b).map_err(|d| shared.corrupt(None, d))?,
            None => Checkpoint::default(),
        };
        let prune: PruneState = match read_meta(meta::PRUNE)? {
            Some(b) => layout::open_meta(&b).map_err(|d| shared.corrupt(None, d))?,
            None => PruneState::default(),
        };
        let stored_retention: Option<Retention> = match read_meta(meta::RETENTION)? {
            Some(b) => Some(layout::open_meta(&b).map_err(|d| shared.corrupt(None, d))?),
            None => None,
        };
        if stored_retention != Some(config.retention) {
            crate::store::KvBatch::put(
                &mut init,
                Cf::Meta,
                meta::RETENTION,
                &layout::seal_meta(&config.retention),
            );
        }
        // The version log and the checkpoint are written in one batch, so
        // they must agree; anything else means the files were tampered with.
        {
            let mut c = shared.cursor(Cf::Versions)?;
            c.seek_to_last();
            shared.cursor_status(&c, None)?;
            if c.valid() {
                let last =
                    layout::parse_version_key(c.key()).map_err(|d| shared.corrupt(None, d))?;
                if last != checkpoint.version {
                    return Err(shared.corrupt(
                        None,
                        format!(
                            "version log ends at {last} but the checkpoint says {}",
                            checkpoint.version
                        ),
                    ));
                }
            }
        }
        if !crate::store::KvBatch::is_empty(&init) {
            shared
                .store
                .write(init)
                .map_err(|e| shared.store_err(e, None))?;
        }
        shared.latest.store(checkpoint.version.0, Ordering::Release);
        shared.last_time.store(checkpoint.time.0, Ordering::Release);
        shared.floor.store(prune.floor, Ordering::Release);
        tracing::debug!(table = %config.name, partition = %config.partition, version = checkpoint.version.0, "opened table partition");
        let cache = cache::LatestCache::new(config.cache_entries);
        Ok(TablePartition {
            staging: Staging::new(config.granularity),
            shared: Arc::new(shared),
            config,
            checkpoint,
            prune,
            prepared: None,
            needs_restore: false,
            cache,
        })
    }

    /// A reader of committed versions, for other threads.
    pub fn reader(&self) -> PartitionReader<S> {
        PartitionReader::new(self.shared.clone())
    }

    /// The partition's settings.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// What the partition has durably applied.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The latest committed version.
    pub fn latest_version(&self) -> Version {
        self.checkpoint.version
    }

    /// Closes the partition and hands back its store, or `None` while
    /// readers made by [`TablePartition::reader`] are still alive. Anything
    /// staged or prepared is dropped, as a crash would.
    pub fn into_store(self) -> Option<S> {
        Arc::try_unwrap(self.shared).ok().map(|s| s.store)
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Makes everything committed durable on disk (a no-op for stores with
    /// a write-ahead log, apart from flushing memtables).
    pub fn flush(&self) -> Result<()> {
        self.shared
            .store
            .flush()
            .map_err(|e| self.shared.store_err(e, None))
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        self.shared.retention()
    }

    /// Changes the retention; takes effect for reads at once and for
    /// storage as pruning proceeds.
    pub fn set_retention(&mut self, retention: Retention) -> Result<()> {
        retention.validate()?;
        let mut b = self.shared.store.batch();
        crate::store::KvBatch::put(
            &mut b,
            Cf::Meta,
            meta::RETENTION,
            &layout::seal_meta(&retention),
        );
        self.shared
            .store
            .write(b)
            .map_err(|e| self.shared.store_err(e, None))?;
        if let Ok(mut r) = self.shared.retention.write() {
            *r = retention;
        }
        self.config.retention = retention;
        Ok(())
    }
}
