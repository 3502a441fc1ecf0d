//! The `state` crate's one error type.
//!
//! Errors name the table, partition and (where there is one) the key they
//! concern, say what to do, and keep their cause. "Beyond retention" is its
//! own variant so that a read of expired history is never mistaken for an
//! absent key.

use crate::types::{Partition, TableName, Timestamp, Version};

/// Where an error happened: a table partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The table.
    pub table: TableName,
    /// The partition of the table.
    pub partition: Partition,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {} partition {}", self.table, self.partition)
    }
}

/// A point in a table's history that a read asked for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Point {
    /// A version.
    Version(Version),
    /// A commit time.
    Time(Timestamp),
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::Version(v) => write!(f, "version {}", v.0),
            Point::Time(t) => write!(f, "time {}", t.0),
        }
    }
}

/// Everything that can go wrong in the `state` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error("invalid configuration `{key}`: {reason}")]
    InvalidConfig {
        /// The offending key.
        key: String,
        /// Why it is invalid and what to use instead.
        reason: String,
    },

    /// The storage engine failed (I/O, options, a closed database).
    #[error("storage error in {location}: {message}")]
    Storage {
        /// The table partition.
        location: Box<Location>,
        /// What the engine said.
        message: String,
    },

    /// Bytes on disk could not be decoded or failed their checksum.
    #[error(
        "corrupt data in {location}{}: {detail}; the partition's local state is unusable, \
         delete its directory and restore it from the changelog",
        key.as_ref().map(|k| format!(" at key {}", crate::codec::display_key(k))).unwrap_or_default()
    )]
    Corrupt {
        /// The table partition.
        location: Box<Location>,
        /// The user key concerned, if any.
        key: Option<Vec<u8>>,
        /// What was wrong.
        detail: String,
    },

    /// A read asked for history older than the table's retention keeps.
    #[error(
        "{point} of {location}{} is beyond retention ({retention}); the oldest readable point is {oldest}",
        key.as_ref().map(|k| format!(" for key {}", crate::codec::display_key(k))).unwrap_or_default()
    )]
    BeyondRetention {
        /// The table partition.
        location: Box<Location>,
        /// The key concerned, if the limit is per key.
        key: Option<Vec<u8>>,
        /// What was asked for.
        point: Point,
        /// The retention policy in force.
        retention: String,
        /// The oldest point still readable, described.
        oldest: String,
    },

    /// A read asked for a version that has not been committed yet.
    #[error("{location} has no {requested} yet: its latest version is {latest}")]
    FutureVersion {
        /// The table partition.
        location: Box<Location>,
        /// What was asked for.
        requested: Version,
        /// The latest committed version.
        latest: Version,
    },

    /// A scan's resume token is malformed or belongs to another scan.
    #[error("invalid scan token for {location}: {reason}; restart the scan without a token")]
    InvalidScanToken {
        /// The table partition.
        location: Box<Location>,
        /// Why it was rejected.
        reason: String,
    },

    /// A request's arguments do not make sense (an empty range, from > to).
    #[error("invalid request on {location}: {reason}")]
    InvalidRequest {
        /// The table partition.
        location: Box<Location>,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A value or key could not be encoded or decoded with the table's codec.
    #[error("codec error: {0}")]
    Codec(String),

    /// An operation was called out of order (e.g. applying a commit that was
    /// not prepared by this partition).
    #[error("{location}: {reason}")]
    Protocol {
        /// The table partition.
        location: Box<Location>,
        /// What was misused.
        reason: String,
    },

    /// A changelog (as seen through the `state` traits) failed.
    #[error("changelog of {location}: {message}")]
    Changelog {
        /// The table partition.
        location: Box<Location>,
        /// What failed.
        message: String,
        /// The cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// The `state` crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this error means "the requested history has expired".
    pub fn is_beyond_retention(&self) -> bool {
        matches!(self, Error::BeyondRetention { .. })
    }

    /// Whether this error means on-disk data is unusable.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

impl From<crate::types::InvalidTableName> for Error {
    fn from(e: crate::types::InvalidTableName) -> Error {
        Error::InvalidConfig {
            key: "table.name".into(),
            reason: e.to_string(),
        }
    }
}
