//! Reads of committed versions: latest, at a version, as of a time, and a
//! key's history. Safe from any thread while the owner writes.
//!
//! Retention is checked logically on every read, so whether the pruner has
//! already removed expired history never changes an answer: a read older
//! than retention fails with [`Error::BeyondRetention`], never "absent".

use std::sync::Arc;

use crate::config::Retention;
use crate::error::Point;
use crate::layout::{self, Entry, EntryKind, VersionRecord};
use crate::store::{Cf, KvCursor, KvStore};
use crate::types::{Lineage, Timestamp, Version, VersionFlags};
use crate::{Error, Result};

use super::Shared;

/// Which state of the table a read sees.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum At {
    /// The latest committed version.
    Latest,
    /// The state right after this version was committed.
    Version(Version),
    /// The state at the last version committed at or before this time.
    Time(Timestamp),
}

/// A key's value at some version, with that version's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The version that wrote the value.
    pub version: Version,
    /// Its commit time.
    pub time: Timestamp,
    /// Its flags.
    pub flags: VersionFlags,
    /// The input record that caused it.
    pub lineage: Option<Lineage>,
    /// The value bytes.
    pub value: Vec<u8>,
}

/// One version in a key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The version.
    pub version: Version,
    /// Its commit time.
    pub time: Timestamp,
    /// Its flags.
    pub flags: VersionFlags,
    /// The input record that caused it.
    pub lineage: Option<Lineage>,
    /// The value written, or `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

/// Direction of a history listing.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Ascending,
    /// Newest first.
    #[default]
    Descending,
}

/// Which part of a key's history to list.
#[derive(Clone, Debug)]
pub struct HistoryQuery {
    /// Oldest version or time to include (inclusive); `None`: from the start.
    pub from: Option<Point>,
    /// Newest version or time to include (inclusive); `None`: to the latest.
    pub to: Option<Point>,
    /// Listing order.
    pub order: Order,
    /// Most entries to return.
    pub limit: usize,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            from: None,
            to: None,
            order: Order::Descending,
            limit: 1000,
        }
    }
}

/// A page of a key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The entries, in the requested order.
    pub entries: Vec<HistoryEntry>,
    /// Where to continue (as the next query's `from` when ascending, `to`
    /// when descending) if the limit cut the listing short.
    pub next: Option<Version>,
    /// True when the requested range reaches back past retention, so older
    /// versions of the key existed but are no longer kept.
    pub truncated_by_retention: bool,
}

/// A handle for reading committed versions of a table partition from any
/// thread. Cheap to clone.
pub struct PartitionReader<S> {
    pub(super) shared: Arc<Shared<S>>,
}

impl<S> Clone for PartitionReader<S> {
    fn clone(&self) -> Self {
        PartitionReader {
            shared: self.shared.clone(),
        }
    }
}

fn to_versioned(e: Entry) -> Option<Versioned> {
    match e.kind {
        EntryKind::Value => Some(Versioned {
            version: e.version,
            time: e.time,
            flags: e.flags,
            lineage: e.lineage,
            value: e.value,
        }),
        _ => None,
    }
}

impl<S: KvStore> PartitionReader<S> {
    pub(super) fn new(shared: Arc<Shared<S>>) -> Self {
        PartitionReader { shared }
    }

    /// The table and partition read.
    pub fn location(&self) -> &crate::error::Location {
        &self.shared.loc
    }

    /// The latest committed version.
    pub fn latest_version(&self) -> Version {
        self.shared.latest()
    }

    /// The commit time of the latest version.
    pub fn last_commit_time(&self) -> Timestamp {
        self.shared.last_time()
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        self.shared.retention()
    }

    /// The latest committed value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        Ok(self.latest_entry(key)?.and_then(to_versioned))
    }

    /// The value of `key` at `at`.
    pub fn get_at(&self, key: &[u8], at: At) -> Result<Option<Versioned>> {
        let v = self.resolve(at)?;
        Ok(self.entry_at(key, v)?.and_then(to_versioned))
    }

    pub(super) fn latest_entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        let s = &self.shared;
        match s
            .store
            .get(Cf::Latest, key)
            .map_err(|e| s.store_err(e, Some(key)))?
        {
            Some(bytes) => Entry::decode(&bytes)
                .map(Some)
                .map_err(|d| s.corrupt(Some(key), d)),
            None => Ok(None),
        }
    }

    /// Where history is readable from for the whole partition: versions
    /// below this are beyond retention.
    fn partition_floor(&self) -> Version {
        Version(self.shared.floor.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The time before which history is beyond retention, for a duration
    /// retention.
    pub fn time_horizon(&self) -> Option<Timestamp> {
        match self.shared.retention() {
            Retention::Duration(d) => Some(self.shared.last_time().saturating_sub(d)),
            _ => None,
        }
    }

    fn beyond(&self, key: Option<&[u8]>, point: Point, oldest: String) -> Error {
        Error::BeyondRetention {
            location: self.shared.loc(),
            key: key.map(<[u8]>::to_vec),
            point,
            retention: self.shared.retention().to_string(),
            oldest,
        }
    }

    /// The metadata of a committed version.
    pub fn version_record(&self, v: Version) -> Result<Option<VersionRecord>> {
        let s = &self.shared;
        match s
            .store
            .get(Cf::Versions, &layout::version_key(v))
            .map_err(|e| s.store_err(e, None))?
        {
            Some(b) => VersionRecord::decode(&b)
                .map(Some)
                .map_err(|d| s.corrupt(None, format!("version log at {v}: {d}"))),
            None => Ok(None),
        }
    }

    /// The metadata of a committed version with the lineage its entry
    /// carries (the input record that caused it). `None` when the version
    /// is not in the version log (pruned, or not committed); the lineage is
    /// `None` for a rewind, or when the key's history entry was pruned.
    pub fn version_lineage(&self, v: Version) -> Result<Option<(VersionRecord, Option<Lineage>)>> {
        let Some(rec) = self.version_record(v)? else {
            return Ok(None);
        };
        let s = &self.shared;
        let lineage = match s
            .store
            .get(Cf::History, &layout::history_key(&rec.key, v))
            .map_err(|e| s.store_err(e, Some(&rec.key)))?
        {
            Some(b) => {
                Entry::decode(&b)
                    .map_err(|d| s.corrupt(Some(&rec.key), d))?
                    .lineage
            }
            None => None,
        };
        Ok(Some((rec, lineage)))
    }

    /// Turns `at` into a version, checking it is committed and retained at
    /// the partition level.
    pub fn resolve(&self, at: At) -> Result<Version> {
        let latest = self.shared.latest();
        match at {
            At::Latest => Ok(latest),
            At::Version(v) => {
                if v > latest {
                    return Err(Error::FutureVersion {
                        location: self.shared.loc(),
                        requested: v,
                        latest,
                    });
                }
                if v == latest {
                    return Ok(v);
                }
                let floor = self.partition_floor();
                if v < floor {
                    return Err(self.beyond(
                        None,
                        Point::Version(v),
                        format!("version {}", floor.0),
                    ));
                }
                if let Some(h) = self.time_horizon() {
                    // The state at v is readable iff it is the state at
                    // some time at or after the horizon.
                    let at_h = self.version_at_time(h)?;
                    if v < at_h {
                        return Err(self.beyond(
                            None,
                            Point::Version(v),
                            format!("version {}", at_h.0),
                        ));
                    }
                }
                Ok(v)
            }
            At::Time(t) => {
                if let Some(h) = self.time_horizon()
                    && t < h
                {
                    return Err(self.beyond(None, Point::Time(t), format!("time {}", h.0)));
                }
                let v = self.version_at_time(t)?;
                let floor = self.partition_floor();
                if v < floor {
                    return Err(self.beyond(None, Point::Time(t), format!("version {}", floor.0)));
                }
                Ok(v)
            }
        }
    }

    /// The last version committed at or before `t` (0 if none).
    fn version_at_time(&self, t: Timestamp) -> Result<Version> {
        let s = &self.shared;
        if t >= s.last_time() {
            return Ok(s.latest());
        }
        let mut c = s.cursor(Cf::Commits)?;
        c.seek_for_prev(&layout::commit_key(t, Version::MAX));
        s.cursor_status(&c, None)?;
        if !c.valid() {
            return Ok(Version::ZERO);
        }
        let (_, v) = layout::parse_commit_key(c.key()).map_err(|d| s.corrupt(None, d))?;
        Ok(v)
    }

    /// The entry of `key` current at version `v` (which must be resolved),
    /// enforcing per-key retention. `None`: the key had no version yet.
    pub(super) fn entry_at(&self, key: &[u8], v: Version) -> Result<Option<Entry>> {
        let s = &self.shared;
        if v == s.latest() {
            // The latest table holds live keys only: a deleted key is absent.
            return self.latest_entry(key);
        }
        let prefix = layout::history_prefix(key);
        let mut c = s.cursor(Cf::History)?;
        c.seek(&layout::history_key(key, v));
        s.cursor_status(&c, Some(key))?;
        if !c.valid() || !c.key().starts_with(&prefix) {
            return Ok(None);
        }
        let entry = Entry::decode(c.value()).map_err(|d| s.corrupt(Some(key), d))?;
        if entry.kind == EntryKind::Expired {
            return Err(self.beyond(
                Some(key),
                Point::Version(v),
                "a later version of this key".into(),
            ));
        }
        if let Retention::LastVersions(n) = s.retention() {
            // Count newer versions of the key, up to n.
            let mut newer = 0u32;
            c.prev();
            while c.valid() && c.key().starts_with(&prefix) && newer < n.get() {
                newer += 1;
                c.prev();
            }
            s.cursor_status(&c, Some(key))?;
            if newer >= n.get() {
                return Err(self.beyond(
                    Some(key),
                    Point::Version(v),
                    format!("the key's last {n} versions"),
                ));
            }
        }
        Ok(Some(entry))
    }

    /// The oldest retained version of `key` under a last-N retention.
    fn oldest_retained(&self, key: &[u8], n: u32) -> Result<Option<Version>> {
        let s = &self.shared;
        let prefix = layout::history_prefix(key);
        let mut c = s.cursor(Cf::History)?;
        c.seek(&prefix);
        let mut seen = 0;
        let mut last = None;
        while c.valid() && c.key().starts_with(&prefix) && seen < n {
            let e = Entry::decode(c.value()).map_err(|d| s.corrupt(Some(key), d))?;
            if e.kind == EntryKind::Expired {
                break;
            }
            last = Some(e.version);
            seen += 1;
            c.next();
        }
        s.cursor_status(&c, Some(key))?;
        Ok(last)
    }

    fn point_to_version(&self, p: Point, lower: bool) -> Result<Version> {
        match p {
            Point::Version(v) => Ok(v.min(self.shared.latest())),
            Point::Time(t) => {
                if lower {
                    // First version committed at or after t.
                    if t.0 == 0 {
                        return Ok(Version(1));
                    }
                    Ok(self.version_at_time(Timestamp(t.0 - 1))?.next())
                } else {
                    self.version_at_time(t)
                }
            }
        }
    }

    /// Lists a key's versions (including deletions) within `q`.
    pub fn history(&self, key: &[u8], q: &HistoryQuery) -> Result<History> {
        let s = &self.shared;
        if q.limit == 0 {
            return Err(Error::InvalidRequest {
                location: s.loc(),
                reason: "history limit must be at least 1".into(),
            });
        }
        let mut from = match q.from {
            Some(p) => self.point_to_version(p, true)?,
            None => Version(1),
        };
        let to = match q.to {
            Some(p) => self.point_to_version(p, false)?,
            None => s.latest(),
        };
        let mut truncated = false;
        // The oldest version still readable for this key.
        // Versions after the partition floor are intact.
        let mut floor = Version(self.partition_floor().0 + 1);
        match s.retention() {
            Retention::LastVersions(n) => {
                if let Some(o) = self.oldest_retained(key, n.get())? {
                    floor = floor.max(o);
                }
            }
            Retention::Duration(_) => {
                if let Some(h) = self.time_horizon() {
                    // Versions committed at or after the horizon.
                    floor = floor.max(self.point_to_version(Point::Time(h), true)?);
                }
            }
            Retention::Unlimited => {}
        }
        if from < floor {
            from = floor;
            truncated = true;
        }
        let mut entries = Vec::new();
        let mut next = None;
        if from > to {
            return Ok(History {
                entries,
                next,
                truncated_by_retention: truncated,
            });
        }
        let prefix = layout::history_prefix(key);
        let mut c = s.cursor(Cf::History)?;
        match q.order {
            Order::Descending => c.seek(&layout::history_key(key, to)),
            Order::Ascending => c.seek_for_prev(&layout::history_key(key, from)),
        }
        while c.valid() && c.key().starts_with(&prefix) {
            let e = Entry::decode(c.value()).map_err(|d| s.corrupt(Some(key), d))?;
            if e.kind == EntryKind::Expired {
                // The key's oldest slot: everything at or below it is gone.
                truncated = true;
                match q.order {
                    Order::Descending => break,
                    Order::Ascending => {
                        c.prev();
                        continue;
                    }
                }
            }
            let in_range = e.version >= from && e.version <= to;
            if !in_range {
                if q.order == Order::Descending && e.version < from {
                    break;
                }
                if q.order == Order::Ascending && e.version > to {
                    break;
                }
            } else {
                if entries.len() == q.limit {
                    next = Some(e.version);
                    break;
                }
                entries.push(HistoryEntry {
                    version: e.version,
                    time: e.time,
                    flags: e.flags,
                    lineage: e.lineage,
                    value: (e.kind == EntryKind::Value).then_some(e.value),
                });
            }
            match q.order {
                Order::Descending => c.next(),
                Order::Ascending => c.prev(),
            }
        }
        s.cursor_status(&c, Some(key))?;
        Ok(History {
            entries,
            next,
            truncated_by_retention: truncated,
        })
    }
}
