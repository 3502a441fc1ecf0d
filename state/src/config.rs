//! Typed settings of a table partition, validated once when it is opened.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::{Partition, TableName};
use crate::{Error, Result};

/// How much history a table keeps. The latest value of a key never expires.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retention {
    /// Every version, forever (bounded by disk space).
    Unlimited,
    /// The last N versions of each key.
    LastVersions(NonZeroU32),
    /// Versions superseded less than this long before the partition's last
    /// commit (measured on the partition's commit clock).
    Duration(Duration),
}

impl Retention {
    /// The last `n` versions per key. `n` must be at least 1.
    pub fn last_versions(n: u32) -> Result<Retention> {
        NonZeroU32::new(n)
            .map(Retention::LastVersions)
            .ok_or_else(|| Error::InvalidConfig {
                key: "table.retention".into(),
                reason: "keeping the last 0 versions would drop the latest value; use at least 1"
                    .into(),
            })
    }

    /// History for `d`. `d` must be at least one millisecond.
    pub fn duration(d: Duration) -> Result<Retention> {
        if d.as_millis() == 0 {
            return Err(Error::InvalidConfig {
                key: "table.retention".into(),
                reason: "a retention of zero keeps no history; use Retention::last_versions(1) to keep only the latest value".into(),
            });
        }
        Ok(Retention::Duration(d))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            Retention::Duration(d) => Retention::duration(*d).map(|_| ()),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retention::Unlimited => write!(f, "unlimited"),
            Retention::LastVersions(n) => write!(f, "last {n} versions per key"),
            Retention::Duration(d) => write!(f, "{} ms of history", d.as_millis()),
        }
    }
}

/// What makes a version.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Granularity {
    /// Every staged mutation becomes its own version.
    #[default]
    PerMutation,
    /// A key's last mutation within one commit becomes its one version
    /// (fewer versions and changelog records; intermediate values are not
    /// kept). A key set back to its committed value still gets a version.
    PerCommit,
}

/// Settings of one table partition.
#[derive(Clone, Debug)]
pub struct TableConfig {
    /// The table.
    pub name: TableName,
    /// The partition.
    pub partition: Partition,
    /// How much history to keep.
    pub retention: Retention,
    /// What makes a version.
    pub granularity: Granularity,
    /// Staged mutations after which the partition reports itself full and
    /// the owner should commit.
    pub max_staged: usize,
    /// Most keys a diff or rewind may touch in one call.
    pub max_diff_keys: usize,
    /// Latest values the owner keeps in memory (a write-through cache in
    /// front of the store, so a read-modify-write of a hot key costs no
    /// store read). 0 disables it.
    pub cache_entries: usize,
}

impl TableConfig {
    /// Default of [`TableConfig::max_staged`].
    pub const DEFAULT_MAX_STAGED: usize = 10_000;
    /// Default of [`TableConfig::cache_entries`]: room for the hot keys of
    /// a partition of a 100,000-key table spread over a few partitions, at
    /// about 100 bytes of overhead plus key and value per entry (a few MB
    /// for small values).
    pub const DEFAULT_CACHE_ENTRIES: usize = 50_000;

    /// Defaults for `name`/`partition`: unlimited retention, a version per
    /// mutation.
    pub fn new(name: TableName, partition: Partition) -> TableConfig {
        TableConfig {
            name,
            partition,
            retention: Retention::Unlimited,
            granularity: Granularity::PerMutation,
            max_staged: Self::DEFAULT_MAX_STAGED,
            max_diff_keys: 1_000_000,
            cache_entries: Self::DEFAULT_CACHE_ENTRIES,
        }
    }

    /// Sets the retention.
    pub fn retention(mut self, r: Retention) -> Self {
        self.retention = r;
        self
    }

    /// Sets the granularity.
    pub fn granularity(mut self, g: Granularity) -> Self {
        self.granularity = g;
        self
    }

    /// Checks the settings, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        self.retention.validate()?;
        if self.max_staged == 0 {
            return Err(Error::InvalidConfig {
                key: "table.max_staged".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.max_diff_keys == 0 {
            return Err(Error::InvalidConfig {
                key: "table.max_diff_keys".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}
