//! Pruning history that retention no longer promises.
//!
//! The pruner walks the version log from where it stopped, in chunks the
//! owner schedules between commits, so writers are never blocked for more
//! than one chunk. Reads enforce retention on their own (see `read.rs`), so
//! pruning only reclaims space and never changes an answer.
//!
//! - Last N per key: version `u` of key `k` pushes the entries `n` places
//!   and more older than `u` out of retention. The key's oldest entry is
//!   replaced by an expiry marker and the others are deleted, so a read
//!   at any version below the retained window lands on the marker and
//!   reports "beyond retention", never "absent". The version log keeps
//!   its (small) records: they date every version, whatever the policy
//!   becomes later.
//! - Duration: a version `u` committed before the horizon makes the entry it
//!   superseded unreadable; that entry and `u`'s version-log record are
//!   deleted, and the partition floor moves to `u`: the state at `u` is
//!   intact, states before it are not.

use std::sync::atomic::Ordering;

use crate::Result;
use crate::config::Retention;
use crate::layout::{self, Entry, EntryKind, PruneState, VersionRecord, meta};
use crate::store::{Cf, KvBatch, KvCursor, KvStore};
use crate::types::Version;

use super::TablePartition;

/// What one pruning step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Versions of the log examined.
    pub examined: usize,
    /// Stored entries removed or replaced by markers.
    pub removed: usize,
    /// True when the pruner has caught up with the latest eligible version.
    pub done: bool,
}

impl<S: KvStore> TablePartition<S> {
    /// Prunes at most `budget` versions' worth of expired history.
    pub fn prune(&mut self, budget: usize) -> Result<PruneReport> {
        let retention = self.shared.retention();
        if self.config.retention != retention {
            self.config.retention = retention;
        }
        let mut state = self.prune.clone();
        if retention_changed(&mut state, retention) {
            state.processed = 0;
        }
        let latest = self.latest_version();
        let mut report = PruneReport::default();
        let shared = self.shared.clone();
        let s = &*shared;
        let horizon = self.reader().time_horizon();
        let mut batch = s.store.batch();
        let mut vc = s.cursor(Cf::Versions)?;
        vc.seek(&layout::version_key(Version(state.processed).next()));
        loop {
            if report.examined >= budget {
                break;
            }
            if !vc.valid() {
                s.cursor_status(&vc, None)?;
                report.done = true;
                break;
            }
            let u = layout::parse_version_key(vc.key()).map_err(|d| s.corrupt(None, d))?;
            if u > latest {
                report.done = true;
                break;
            }
            let rec = VersionRecord::decode(vc.value())
                .map_err(|d| s.corrupt(None, format!("version log at {u}: {d}")))?;
            match retention {
                Retention::Unlimited => {}
                Retention::LastVersions(n) => {
                    report.removed += self.expire_last_n(&mut batch, &rec.key, u, n.get())?;
                }
                Retention::Duration(_) => {
                    let Some(h) = horizon else { break };
                    if rec.time >= h {
                        report.done = true;
                        break;
                    }
                    report.removed += self.expire_superseded(&mut batch, &rec, u)?;
                    batch.delete(Cf::Versions, vc.key());
                    state.floor = u.0;
                }
            }
            state.processed = u.0;
            report.examined += 1;
            vc.next();
        }
        drop(vc);
        if let (Retention::Duration(_), Some(h)) = (retention, horizon) {
            report.removed += self.prune_commit_index(&mut batch, h, budget)?;
        }
        if state != self.prune || !batch.is_empty() {
            batch.put(Cf::Meta, meta::PRUNE, &layout::seal_meta(&state));
            s.store.write(batch).map_err(|e| s.store_err(e, None))?;
            s.floor.store(state.floor, Ordering::Release);
            self.prune = state;
        }
        Ok(report)
    }

    /// Under last-N: expire the entry `n` places older than `u`.
    fn expire_last_n(&self, batch: &mut S::Batch, key: &[u8], u: Version, n: u32) -> Result<usize> {
        let s = &self.shared;
        let prefix = layout::history_prefix(key);
        let mut c = s.cursor(Cf::History)?;
        c.seek(&layout::history_key(key, u));
        for _ in 0..n {
            if !(c.valid() && c.key().starts_with(&prefix)) {
                break;
            }
            c.next();
        }
        // Everything from here down is beyond retention. The oldest entry
        // becomes (or stays) the expiry marker, so that any read below the
        // retained window lands on it; the entries between are deleted.
        let mut removed = 0;
        let mut pending: Option<(Vec<u8>, Entry)> = None;
        while c.valid() && c.key().starts_with(&prefix) {
            let e = Entry::decode(c.value()).map_err(|d| s.corrupt(Some(key), d))?;
            if let Some((k, prev)) = pending.take() {
                let _ = prev;
                batch.delete(Cf::History, &k);
                removed += 1;
            }
            pending = Some((c.key().to_vec(), e));
            c.next();
        }
        if let Some((k, oldest)) = pending
            && oldest.kind != EntryKind::Expired
        {
            let marker = Entry {
                kind: EntryKind::Expired,
                value: Vec::new(),
                lineage: None,
                ..oldest
            };
            batch.put(Cf::History, &k, &marker.encode());
            removed += 1;
        }
        s.cursor_status(&c, Some(key))?;
        Ok(removed)
    }

    /// Under a duration: delete the entry `u` superseded. (A deleted key's
    /// final tombstone is kept: it is one small entry, and without it a later
    /// change of policy could not tell "absent" from "expired".)
    fn expire_superseded(
        &self,
        batch: &mut S::Batch,
        rec: &VersionRecord,
        u: Version,
    ) -> Result<usize> {
        let s = &self.shared;
        let key = &rec.key;
        let prefix = layout::history_prefix(key);
        let mut removed = 0;
        let mut c = s.cursor(Cf::History)?;
        if u.0 > 1 {
            c.seek(&layout::history_key(key, Version(u.0 - 1)));
            if c.valid() && c.key().starts_with(&prefix) {
                // An expiry marker left by a last-N policy stays: it is what
                // makes reads of the versions it covers fail clearly.
                let e = Entry::decode(c.value()).map_err(|d| s.corrupt(Some(key), d))?;
                if e.kind != EntryKind::Expired {
                    batch.delete(Cf::History, c.key());
                    removed += 1;
                }
            }
        }
        s.cursor_status(&c, Some(key))?;
        Ok(removed)
    }

    /// Deletes time-index entries before the horizon, keeping the newest
    /// of them (it resolves reads at times between it and the horizon).
    fn prune_commit_index(
        &self,
        batch: &mut S::Batch,
        h: crate::types::Timestamp,
        budget: usize,
    ) -> Result<usize> {
        let s = &self.shared;
        let mut c = s.cursor(Cf::Commits)?;
        c.seek_to_first();
        let mut removed = 0;
        let mut prev: Option<Vec<u8>> = None;
        while c.valid() && removed < budget {
            let (t, _) = layout::parse_commit_key(c.key()).map_err(|d| s.corrupt(None, d))?;
            if t >= h {
                break;
            }
            if let Some(p) = prev.take() {
                batch.delete(Cf::Commits, &p);
                removed += 1;
            }
            prev = Some(c.key().to_vec());
            c.next();
        }
        s.cursor_status(&c, None)?;
        Ok(removed)
    }
}

/// Tracks which retention the pruning cursor was made under; a change of
/// policy restarts the walk (idempotent) so history kept under a looser
/// policy gets pruned under the new one.
fn retention_changed(state: &mut PruneState, retention: Retention) -> bool {
    let code = match retention {
        Retention::Unlimited => 1,
        Retention::LastVersions(n) => 2 + ((n.get() as u64) << 8),
        Retention::Duration(d) => 3 + ((d.as_millis() as u64) << 8),
    };
    if state.policy != code {
        state.policy = code;
        return true;
    }
    false
}
