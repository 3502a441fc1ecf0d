//! Newtypes for the positions and identities a versioned table deals in.
//!
//! Every number that crosses a public signature has a name: a [`Version`] is
//! never confused with a changelog [`Offset`], and a [`Timestamp`] is always
//! milliseconds since the Unix epoch.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A committed mutation's number within one table partition.
///
/// Versions start at 1 and increase by exactly one per committed mutation
/// (rewinds included), so a partition's version sequence has no gaps.
/// `Version::ZERO` names the empty table before any commit.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version(pub u64);

impl Version {
    /// The state before the first commit.
    pub const ZERO: Version = Version(0);
    /// The largest representable version.
    pub const MAX: Version = Version(u64::MAX);

    /// The version after this one.
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Milliseconds since the Unix epoch.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time. Deterministic code takes a `Timestamp` as
    /// input instead of calling this.
    pub fn now() -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// This time minus a duration, saturating at the epoch.
    pub fn saturating_sub(self, d: std::time::Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(d.as_millis() as u64))
    }

    /// This time for people: RFC 3339 in UTC to the millisecond
    /// (`2026-12-02T16:08:02.709Z`), the form the CLI prints and parses.
    /// `Display` of a `Timestamp` itself stays the raw `<n>ms`, which error
    /// messages and logs compare exactly.
    pub fn rfc3339(self) -> Rfc3339 {
        Rfc3339(self)
    }
}

/// A [`Timestamp`] displayed as RFC 3339 in UTC (see [`Timestamp::rfc3339`]).
/// A time past what RFC 3339 can say (beyond year 9999) shows as `@<n>ms`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Rfc3339(Timestamp);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.0;
        match i64::try_from(ms)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .filter(|t| chrono::Datelike::year(t) <= 9999)
        {
            Some(t) => f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            None => write!(f, "@{ms}ms"),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A partition number (of a table, its changelog, or an input topic).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Partition(pub u32);

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An offset within a topic partition (input or changelog).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// Where a version's record sits in the table partition's changelog: the
/// offset of the record itself. Restoring resumes at `position + 1`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangelogPosition(pub Offset);

/// A table's name: non-empty, at most 200 bytes, of `[A-Za-z0-9._-]`, so it
/// can prefix a Kafka topic name and a directory name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableName(String);

impl TableName {
    /// Validates and wraps a table name.
    pub fn new(name: impl Into<String>) -> Result<TableName, InvalidTableName> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 200
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if ok {
            Ok(TableName(name))
        } else {
            Err(InvalidTableName(name))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A string that is not a valid [`TableName`] (converts into
/// [`crate::Error::InvalidConfig`] naming `table.name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidTableName(pub String);

impl fmt::Display for InvalidTableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a valid table name: use 1-200 characters of [A-Za-z0-9._-]",
            self.0
        )
    }
}

impl std::error::Error for InvalidTableName {}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which input record caused a version: the source topic, partition and offset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lineage {
    /// The input topic.
    pub topic: String,
    /// The input partition.
    pub partition: Partition,
    /// The input record's offset.
    pub offset: Offset,
}

/// Flags carried by a version.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionFlags(pub u8);

impl VersionFlags {
    /// No flags.
    pub const NONE: VersionFlags = VersionFlags(0);
    /// The version was written by a rewind.
    pub const REWIND: VersionFlags = VersionFlags(1);
    /// The version was written while replaying input after a rewind.
    pub const REPLAY: VersionFlags = VersionFlags(2);

    /// Whether every flag in `other` is set here.
    pub fn contains(self, other: VersionFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of both flag sets.
    pub fn union(self, other: VersionFlags) -> VersionFlags {
        VersionFlags(self.0 | other.0)
    }

    /// Whether this version was written by a rewind.
    pub fn is_rewind(self) -> bool {
        self.contains(VersionFlags::REWIND)
    }
}

/// An input position a checkpoint reflects: the next offset to consume from
/// `topic`/`partition`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputOffset {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: Partition,
    /// The next offset to consume.
    pub next: Offset,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_to_the_millisecond() {
        assert_eq!(
            Timestamp(1_764_691_682_709).rfc3339().to_string(),
            "2025-12-02T16:08:02.709Z"
        );
        assert_eq!(
            Timestamp(0).rfc3339().to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        // Past year 9999 RFC 3339 has no form: the raw value, marked.
        assert_eq!(
            Timestamp(u64::MAX).rfc3339().to_string(),
            format!("@{}ms", u64::MAX)
        );
        assert_eq!(
            Timestamp(253_402_300_800_000).rfc3339().to_string(),
            "@253402300800000ms"
        );
        // Display of the timestamp itself is unchanged.
        assert_eq!(Timestamp(5).to_string(), "5ms");
    }
}
