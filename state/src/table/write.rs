//! The owner's write path: staging, the two-phase commit, and applying
//! records restored from a changelog.
//!
//! Invariants: versions are assigned densely (`latest + 1`, `latest + 2`, …)
//! at prepare; commit time is `max(now, last commit time)`, so it never goes
//! backwards even if the clock does; one store write carries a commit's
//! values, history, version log, time index and checkpoint.

use std::sync::atomic::Ordering;

use crate::changelog::ChangeRecord;
use crate::layout::{self, meta};
use crate::store::{Cf, KvBatch, KvStore};
use crate::types::{
    ChangelogPosition, InputOffset, Lineage, Offset, Timestamp, Version, VersionFlags,
};
use crate::{Error, Result};

use super::read::Versioned;
use super::{Checkpoint, TablePartition};

/// A commit whose versions are fixed, waiting for its changelog records to
/// be acknowledged.
#[derive(Debug)]
#[must_use = "a prepared commit must be applied or discarded"]
pub struct PreparedCommit {
    records: Vec<ChangeRecord>,
    /// Each record's encoded entry: the changelog payload and the bytes
    /// stored in `latest` and `history`, encoded once.
    payloads: Vec<Vec<u8>>,
    time: Timestamp,
}

impl PreparedCommit {
    /// The records to replicate, in version order.
    pub fn records(&self) -> &[ChangeRecord] {
        &self.records
    }

    /// Each record's changelog payload ([`ChangeRecord::encode_value`]),
    /// in the same order as [`PreparedCommit::records`].
    pub fn payloads(&self) -> &[Vec<u8>] {
        &self.payloads
    }

    /// The commit time shared by all its versions.
    pub fn time(&self) -> Timestamp {
        self.time
    }

    /// The versions the commit will create (empty when nothing was staged).
    pub fn versions(&self) -> std::ops::RangeInclusive<Version> {
        match (self.records.first(), self.records.last()) {
            (Some(a), Some(b)) => a.version..=b.version,
            _ => Version(1)..=Version::ZERO,
        }
    }
}

/// What a commit wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitSummary {
    /// Versions created (none for an empty commit).
    pub versions: std::ops::RangeInclusive<Version>,
    /// The commit time.
    pub time: Timestamp,
}

/// What one call to [`TablePartition::restore`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStep {
    /// Records applied.
    pub applied: usize,
    /// Records skipped because the partition already had their version.
    pub skipped: usize,
}

impl<S: KvStore> TablePartition<S> {
    /// Stages `key = value`.
    pub fn put(&mut self, key: &[u8], value: &[u8], lineage: Option<Lineage>) {
        self.stage(key, Some(value), lineage, VersionFlags::NONE);
    }

    /// Stages the deletion of `key`.
    pub fn delete(&mut self, key: &[u8], lineage: Option<Lineage>) {
        self.stage(key, None, lineage, VersionFlags::NONE);
    }

    /// Stages a mutation with explicit flags (e.g. a replayed record).
    pub fn stage(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        lineage: Option<Lineage>,
        flags: VersionFlags,
    ) {
        self.stage_owned(key, value.map(<[u8]>::to_vec), lineage, flags);
    }

    /// Stages a mutation whose value the caller hands over (no copy).
    pub fn stage_owned(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        lineage: Option<Lineage>,
        flags: VersionFlags,
    ) {
        self.staging.stage(key, value, lineage, flags);
    }

    /// Number of staged mutations.
    pub fn staged_len(&self) -> usize {
        self.staging.len()
    }

    /// Whether enough is staged that the owner should commit now.
    pub fn is_full(&self) -> bool {
        self.staging.len() >= self.config.max_staged
    }

    /// The owner's view of `key`: its staged value if any, else its latest
    /// committed value (read-your-writes). `Ok(None)` when absent or deleted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(s) = self.staging.get(key) {
            return Ok(s.value.clone());
        }
        Ok(self.reader().get(key)?.map(|v| v.value))
    }

    /// The owner's view of `key`, like [`TablePartition::get`], served from
    /// the cache of latest values when it can be (and filling it).
    pub fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(s) = self.staging.get(key) {
            return Ok(s.value.clone());
        }
        if let Some(cache) = self.cache.as_mut()
            && let Some(v) = cache.get(key)
        {
            return Ok(v.map(<[u8]>::to_vec));
        }
        let v = self.reader().get(key)?.map(|v| v.value);
        if let Some(cache) = self.cache.as_mut() {
            cache.insert(key, v.as_deref());
        }
        Ok(v)
    }

    /// The latest committed version of `key`, ignoring staged mutations.
    pub fn get_committed(&self, key: &[u8]) -> Result<Option<Versioned>> {
        self.reader().get(key)
    }

    /// Drops everything staged.
    pub fn discard_staged(&mut self) {
        self.staging.clear();
    }

    /// Fixes versions and a commit time for everything staged.
    pub fn prepare(&mut self, now: Timestamp) -> Result<PreparedCommit> {
        if self.needs_restore {
            return Err(Error::Protocol {
                location: self.shared.loc(),
                reason: "a changelog append failed and may have landed; restore from the changelog before committing again".into(),
            });
        }
        if let Some(first) = self.prepared {
            return Err(Error::Protocol {
                location: self.shared.loc(),
                reason: format!(
                    "a commit starting at {first} is already prepared; apply or discard it first"
                ),
            });
        }
        let time = now.max(self.checkpoint.time);
        let mut next = self.checkpoint.version;
        let records: Vec<ChangeRecord> = self
            .staging
            .take()
            .into_iter()
            .map(|s| {
                next = next.next();
                ChangeRecord {
                    key: s.key,
                    version: next,
                    time,
                    flags: s.flags,
                    lineage: s.lineage,
                    value: s.value,
                }
            })
            .collect();
        if let Some(r) = records.first() {
            self.prepared = Some(r.version);
        }
        let payloads = records.iter().map(ChangeRecord::encode_value).collect();
        Ok(PreparedCommit {
            records,
            payloads,
            time,
        })
    }

    /// Abandons a prepared commit known not to have reached the changelog:
    /// its mutations are lost and the next prepare reuses its versions.
    pub fn discard(&mut self, prepared: PreparedCommit) {
        drop(prepared);
        self.prepared = None;
    }

    /// Abandons a prepared commit whose changelog append failed with an
    /// unknown outcome (a timeout): its records may have landed. Further
    /// commits are refused until [`TablePartition::restore`] has caught the
    /// partition up with the changelog, so no version is ever written twice
    /// with different contents.
    pub fn abandon_unknown(&mut self, prepared: PreparedCommit) {
        drop(prepared);
        self.prepared = None;
        self.needs_restore = true;
    }

    /// Whether a failed append must be resolved by a restore first.
    pub fn needs_restore(&self) -> bool {
        self.needs_restore
    }

    /// Writes a prepared commit. `changelog` gives the changelog offset of
    /// each record (same order), or is empty when there is no changelog.
    pub fn apply(
        &mut self,
        prepared: PreparedCommit,
        changelog: &[Offset],
        inputs: &[InputOffset],
    ) -> Result<CommitSummary> {
        let expected = prepared.records.first().map(|r| r.version);
        if expected != self.prepared {
            return Err(Error::Protocol {
                location: self.shared.loc(),
                reason: format!(
                    "apply of a commit starting at {expected:?} that was not the one prepared ({:?})",
                    self.prepared
                ),
            });
        }
        if !changelog.is_empty() && changelog.len() != prepared.records.len() {
            return Err(Error::Protocol {
                location: self.shared.loc(),
                reason: format!(
                    "{} changelog offsets for {} records",
                    changelog.len(),
                    prepared.records.len()
                ),
            });
        }
        let versions = prepared.versions();
        let time = prepared.time;
        self.write_records(
            &prepared.records,
            Some(&prepared.payloads),
            changelog,
            inputs,
        )?;
        self.prepared = None;
        Ok(CommitSummary { versions, time })
    }

    /// Prepares and applies in one step, without a changelog.
    pub fn commit(&mut self, now: Timestamp, inputs: &[InputOffset]) -> Result<CommitSummary> {
        let p = self.prepare(now)?;
        self.apply(p, &[], inputs)
    }

    /// One atomic store write of `records` (dense versions following the
    /// checkpoint), then the published watermark. `encoded` holds their
    /// entries when the caller has them already (a prepared commit).
    fn write_records(
        &mut self,
        records: &[ChangeRecord],
        encoded: Option<&[Vec<u8>]>,
        changelog: &[Offset],
        inputs: &[InputOffset],
    ) -> Result<()> {
        let (batch, checkpoint) =
            self.build_write(&self.checkpoint, records, encoded, changelog, inputs, None);
        self.shared
            .store
            .write(batch)
            .map_err(|e| self.shared.store_err(e, None))?;
        self.refresh_cache(records);
        self.publish(checkpoint);
        Ok(())
    }

    /// The batch writing `records` (dense versions following `base`), and
    /// the checkpoint it holds. `inputs`, when not empty, replaces the
    /// input offsets; `end`, when later, becomes the changelog position
    /// (records skipped as duplicates still move it on).
    ///
    /// The writes go into the batch grouped by column family and in key
    /// order within each (`latest` keeps only the last record of each key):
    /// a memtable insert then starts its search next to the previous one,
    /// where records in version order would land at random places in the
    /// skip list. Keys of one column family are distinct, so the order
    /// changes nothing but the cost.
    pub(super) fn build_write(
        &self,
        base: &Checkpoint,
        records: &[ChangeRecord],
        encoded: Option<&[Vec<u8>]>,
        changelog: &[Offset],
        inputs: &[InputOffset],
        end: Option<ChangelogPosition>,
    ) -> (S::Batch, Checkpoint) {
        let shared = &self.shared;
        let computed: Vec<Vec<u8>>;
        let entries: &[Vec<u8>] = match encoded {
            Some(e) => e,
            None => {
                computed = records.iter().map(ChangeRecord::encode_value).collect();
                &computed
            }
        };
        debug_assert_eq!(entries.len(), records.len());
        // Record indices by (key, version): one sort serves both `latest`
        // (each key's last record) and `history` (a key's records newest
        // first, which is the order of their history keys).
        let mut order: Vec<(&[u8], usize)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key.as_slice(), i))
            .collect();
        order.sort_unstable();
        let groups: Vec<&[(&[u8], usize)]> = order.chunk_by(|a, b| a.0 == b.0).collect();
        // Room for every entry twice (`latest` and `history`), the keys,
        // the version log and some slack, so the batch is not copied as it
        // grows.
        let bytes: usize = entries
            .iter()
            .zip(records)
            .map(|(e, r)| 2 * (e.len() + r.key.len()) + 64)
            .sum();
        let mut batch = shared.store.batch_with_capacity(bytes + 1024);
        for group in &groups {
            let Some(&(key, i)) = group.last() else {
                continue;
            };
            if records[i].value.is_some() {
                batch.put(Cf::Latest, key, &entries[i]);
            } else {
                batch.delete(Cf::Latest, key);
            }
        }
        // One scratch buffer for every history and version-log entry: the
        // batch copies what it is given.
        let mut scratch = Vec::with_capacity(64);
        for group in &groups {
            for &(key, i) in group.iter().rev() {
                layout::history_key_into(key, records[i].version, &mut scratch);
                batch.put(Cf::History, &scratch, &entries[i]);
            }
        }
        let mut checkpoint = base.clone();
        let mut run: Option<(Timestamp, Version)> = None;
        let mut commit_keys = Vec::new();
        for (i, r) in records.iter().enumerate() {
            debug_assert_eq!(r.version, checkpoint.version.next());
            let offset = changelog.get(i).copied();
            layout::encode_version_record(
                r.time,
                r.flags,
                r.value.is_none(),
                offset.map(|o| o.0),
                &r.key,
                &mut scratch,
            );
            batch.put(Cf::Versions, &layout::version_key(r.version), &scratch);
            // One time-index entry per run of equal commit times.
            match run {
                Some((t, _)) if t == r.time => run = Some((t, r.version)),
                Some((t, v)) => {
                    commit_keys.push(layout::commit_key(t, v));
                    run = Some((r.time, r.version));
                }
                None => run = Some((r.time, r.version)),
            }
            checkpoint.version = r.version;
            checkpoint.time = checkpoint.time.max(r.time);
            if let Some(o) = offset {
                checkpoint.changelog = Some(ChangelogPosition(o));
            }
        }
        if let Some((t, v)) = run {
            commit_keys.push(layout::commit_key(t, v));
        }
        // Restored records may hold several commit times; their keys are
        // already ascending (times never decrease, versions increase).
        for k in &commit_keys {
            batch.put(Cf::Commits, k, &[]);
        }
        if !inputs.is_empty() {
            checkpoint.inputs = inputs.to_vec();
        }
        if end > checkpoint.changelog {
            checkpoint.changelog = end;
        }
        batch.put(Cf::Meta, meta::CHECKPOINT, &layout::seal_meta(&checkpoint));
        (batch, checkpoint)
    }

    /// Refreshes the cached keys among `records` (now committed) only:
    /// filling the cache with every write would let one large commit (or
    /// rewind) evict the owner's hot keys; `read` fills it on a miss.
    pub(super) fn refresh_cache(&mut self, records: &[ChangeRecord]) {
        if let Some(cache) = self.cache.as_mut() {
            for r in records {
                cache.refresh(&r.key, r.value.as_deref());
            }
        }
    }

    /// Forgets every cached value (after a failed write, whose records the
    /// cache may already hold).
    pub(super) fn clear_cache(&mut self) {
        if let Some(cache) = self.cache.as_mut() {
            cache.clear();
        }
    }

    /// Makes `checkpoint`, now written, the partition's, and publishes its
    /// version to readers.
    pub(super) fn publish(&mut self, checkpoint: Checkpoint) {
        self.shared
            .last_time
            .store(checkpoint.time.0, Ordering::Release);
        self.shared
            .latest
            .store(checkpoint.version.0, Ordering::Release);
        self.checkpoint = checkpoint;
    }
}

impl<S: KvStore> TablePartition<S> {
    /// Prepares, replicates and applies everything staged: the at-least-once
    /// commit. On a changelog failure the prepared commit is abandoned with
    /// an unknown outcome and the error returned: the owner must restore
    /// from the changelog ([`TablePartition::restore_from`]) and reprocess
    /// its input from the checkpoint before committing again.
    pub fn commit_to(
        &mut self,
        log: &mut dyn crate::changelog::ChangelogWriter,
        now: Timestamp,
        inputs: &[crate::types::InputOffset],
    ) -> Result<crate::table::CommitSummary> {
        let prepared = self.prepare(now)?;
        match log.append_encoded(prepared.records(), prepared.payloads()) {
            Ok(offsets) => self.apply(prepared, &offsets, inputs),
            Err(e) => {
                self.abandon_unknown(prepared);
                Err(e)
            }
        }
    }
}
