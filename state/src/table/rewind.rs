//! Diffs between two states of a partition, and rewinds to an earlier one.
//!
//! Both walk the version log between the two versions to find the keys
//! that changed, so they cost time proportional to the changes, not to the
//! table. A rewind is planned as ordinary mutations flagged
//! [`VersionFlags::REWIND`] and committed as new versions: it can itself be
//! rewound.

use std::collections::BTreeSet;

use crate::layout::{self, EntryKind, VersionRecord};
use crate::store::{Cf, KvCursor, KvStore};
use crate::types::{Timestamp, Version, VersionFlags};
use crate::{Error, Result};

use super::TablePartition;
use super::read::{At, PartitionReader, Versioned};
use super::scan::KeyRange;

/// A key whose value differs between two versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Its value at the earlier version (`None`: absent).
    pub before: Option<Versioned>,
    /// Its value at the later version (`None`: absent).
    pub after: Option<Versioned>,
}

/// The mutations a rewind would make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewindPlan {
    /// The version rewound to.
    pub target: Version,
    /// The latest version when planned.
    pub from: Version,
    /// Each key to change: `before` is its value at `target` (what it will
    /// become), `after` its current value.
    pub changes: Vec<DiffEntry>,
}

impl<S: KvStore> PartitionReader<S> {
    /// Keys of `range` written by versions in `(from, to]`.
    fn changed_keys(
        &self,
        from: Version,
        to: Version,
        range: &KeyRange,
        max: usize,
    ) -> Result<BTreeSet<Vec<u8>>> {
        let s = &self.shared;
        let mut keys = BTreeSet::new();
        let mut c = s.cursor(Cf::Versions)?;
        c.seek(&layout::version_key(from.next()));
        while c.valid() {
            let v = layout::parse_version_key(c.key()).map_err(|d| s.corrupt(None, d))?;
            if v > to {
                break;
            }
            let rec = VersionRecord::decode(c.value())
                .map_err(|d| s.corrupt(None, format!("version log at {v}: {d}")))?;
            if range.contains(&rec.key) {
                keys.insert(rec.key);
                if keys.len() > max {
                    return Err(Error::InvalidRequest {
                        location: s.loc(),
                        reason: format!(
                            "more than {max} keys changed in the range; narrow the key range or the versions"
                        ),
                    });
                }
            }
            c.next();
        }
        s.cursor_status(&c, None)?;
        Ok(keys)
    }

    /// The keys of `range` whose values differ between `from` and `to`,
    /// with both values, in key order.
    pub fn diff(
        &self,
        from: At,
        to: At,
        range: &KeyRange,
        max_keys: usize,
    ) -> Result<Vec<DiffEntry>> {
        let (a, b) = (self.resolve(from)?, self.resolve(to)?);
        self.diff_resolved(a, b, range, max_keys)
    }

    /// [`PartitionReader::diff`] between versions already resolved (and
    /// retention-checked) by [`PartitionReader::resolve`].
    fn diff_resolved(
        &self,
        a: Version,
        b: Version,
        range: &KeyRange,
        max_keys: usize,
    ) -> Result<Vec<DiffEntry>> {
        if a > b {
            return Err(Error::InvalidRequest {
                location: self.shared.loc(),
                reason: format!(
                    "diff from {a} to {b}: the first point must not be later than the second"
                ),
            });
        }
        let mut out = Vec::new();
        for key in self.changed_keys(a, b, range, max_keys)? {
            let before = self
                .entry_at(&key, a)?
                .filter(|e| e.kind == EntryKind::Value);
            let after = self
                .entry_at(&key, b)?
                .filter(|e| e.kind == EntryKind::Value);
            let same = match (&before, &after) {
                (Some(x), Some(y)) => x.value == y.value,
                (None, None) => true,
                _ => false,
            };
            if !same {
                let conv = |e: crate::layout::Entry| Versioned {
                    version: e.version,
                    time: e.time,
                    flags: e.flags,
                    lineage: e.lineage,
                    value: e.value,
                };
                out.push(DiffEntry {
                    key,
                    before: before.map(conv),
                    after: after.map(conv),
                });
            }
        }
        Ok(out)
    }

    /// What rewinding `range` to `target` would change.
    pub fn plan_rewind(&self, target: At, range: &KeyRange, max_keys: usize) -> Result<RewindPlan> {
        let from = self.shared.latest();
        let t = self.resolve(target)?;
        let changes = self.diff_resolved(t, from, range, max_keys)?;
        Ok(RewindPlan {
            target: t,
            from,
            changes,
        })
    }
}

impl<S: KvStore> TablePartition<S> {
    /// Plans a rewind of `range` to `target` without changing anything.
    pub fn plan_rewind(&self, target: At, range: &KeyRange) -> Result<RewindPlan> {
        self.reader()
            .plan_rewind(target, range, self.config.max_diff_keys)
    }

    /// Stages the mutations that bring `range` back to its state at
    /// `target`, flagged as a rewind; commit them like any others. Deleted
    /// keys come back; keys born after the target are deleted.
    pub fn rewind(&mut self, target: At, range: &KeyRange) -> Result<RewindPlan> {
        if self.staged_len() > 0 || self.prepared.is_some() {
            return Err(Error::Protocol {
                location: self.shared.loc(),
                reason: "rewind with uncommitted mutations staged; commit or discard them first"
                    .into(),
            });
        }
        let plan = self.plan_rewind(target, range)?;
        self.stage_plan(&plan)?;
        Ok(plan)
    }

    /// Stages a plan made earlier by [`TablePartition::plan_rewind`]; fails
    /// if the partition has moved on since.
    pub fn stage_plan(&mut self, plan: &RewindPlan) -> Result<()> {
        if plan.from != self.latest_version() {
            return Err(Error::Protocol {
                location: self.shared.loc(),
                reason: format!(
                    "the rewind plan was made at {} but the partition is now at {}; plan again",
                    plan.from,
                    self.latest_version()
                ),
            });
        }
        for d in &plan.changes {
            let value = d.before.as_ref().map(|b| b.value.as_slice());
            self.stage(&d.key, value, None, VersionFlags::REWIND);
        }
        Ok(())
    }

    /// Rewinds to the state as of a time: convenience for
    /// `rewind(At::Time(t), range)`.
    pub fn rewind_to_time(&mut self, t: Timestamp, range: &KeyRange) -> Result<RewindPlan> {
        self.rewind(At::Time(t), range)
    }
}
