//! Changelog records and the traits a changelog implements.
//!
//! A changelog record is one committed version: key = the user key, value =
//! the same [`Entry`] bytes the store keeps (version, commit time, flags,
//! lineage, value or deletion, CRC). Because each record carries its
//! version, replaying a changelog reproduces identical versions, and
//! duplicates left by a retried produce are recognised and skipped. A
//! deletion is an ordinary record, never a Kafka tombstone. Every record of
//! a key is history, so a changelog topic MUST NOT be compacted: it uses
//! time or size retention at least as long as the table's.
//!
//! `state` knows nothing of Kafka: the engine implements [`ChangelogWriter`]
//! and [`ChangelogReader`] over Kafka topics; [`MemoryChangelog`] implements
//! them for tests.

use crate::layout::{Entry, EntryKind};
use crate::types::{Lineage, Offset, Timestamp, Version, VersionFlags};
use crate::{Error, Result};

/// One committed version of one key, as replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRecord {
    /// The user key.
    pub key: Vec<u8>,
    /// The version.
    pub version: Version,
    /// Its commit time.
    pub time: Timestamp,
    /// Its flags.
    pub flags: VersionFlags,
    /// The input record that caused it.
    pub lineage: Option<Lineage>,
    /// The new value, or `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

impl ChangeRecord {
    /// The record's payload (the key travels separately).
    pub fn encode_value(&self) -> Vec<u8> {
        crate::layout::encode_entry(
            self.version,
            self.time,
            self.flags,
            if self.value.is_some() {
                EntryKind::Value
            } else {
                EntryKind::Tombstone
            },
            self.lineage.as_ref(),
            self.value.as_deref().unwrap_or_default(),
        )
    }

    /// Decodes a record from its key and payload; fails on a bad CRC or
    /// format, or on an expiry marker (which is never replicated).
    pub fn decode(key: &[u8], value: &[u8]) -> std::result::Result<ChangeRecord, String> {
        let e = Entry::decode(value)?;
        let value = match e.kind {
            EntryKind::Value => Some(e.value),
            EntryKind::Tombstone => None,
            EntryKind::Expired => return Err("expiry marker found in a changelog".into()),
        };
        Ok(ChangeRecord {
            key: key.to_vec(),
            version: e.version,
            time: e.time,
            flags: e.flags,
            lineage: e.lineage,
            value,
        })
    }
}

/// Appends records to one table partition's changelog.
pub trait ChangelogWriter {
    /// Appends `records` in order and returns each one's offset once the
    /// log has acknowledged them all.
    fn append(&mut self, records: &[ChangeRecord]) -> Result<Vec<Offset>>;

    /// Like [`ChangelogWriter::append`], with each record's payload already
    /// encoded: `payloads[i]` MUST be `records[i].encode_value()`. A commit
    /// encodes each version once, for the changelog and the store alike;
    /// a writer that sends the bytes as they are should override this.
    fn append_encoded(
        &mut self,
        records: &[ChangeRecord],
        payloads: &[Vec<u8>],
    ) -> Result<Vec<Offset>> {
        debug_assert_eq!(records.len(), payloads.len());
        self.append(records)
    }
}

/// A batch read from a changelog.
#[derive(Clone, Debug, Default)]
pub struct ChangelogBatch {
    /// Records with their offsets, in order.
    pub records: Vec<(Offset, ChangeRecord)>,
    /// True when the read reached the end of the log.
    pub end: bool,
}

/// Reads one table partition's changelog.
pub trait ChangelogReader {
    /// Reads up to `max` records starting at `from`.
    fn read(&mut self, from: Offset, max: usize) -> Result<ChangelogBatch>;

    /// An estimate of where the log ends, for progress reports only (a
    /// restore stops at the end [`ChangelogReader::read`] reports, never at
    /// this estimate, which some brokers get wrong).
    fn end_estimate(&mut self) -> Option<Offset> {
        None
    }
}

/// A changelog held in memory, for tests and the test driver.
#[derive(Clone, Debug, Default)]
pub struct MemoryChangelog {
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl MemoryChangelog {
    /// An empty log.
    pub fn new() -> MemoryChangelog {
        MemoryChangelog::default()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Appends raw bytes (e.g. to simulate a corrupt record).
    pub fn append_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.records.push((key, value));
    }
}

impl ChangelogWriter for MemoryChangelog {
    fn append(&mut self, records: &[ChangeRecord]) -> Result<Vec<Offset>> {
        let base = self.records.len() as u64;
        self.records
            .extend(records.iter().map(|r| (r.key.clone(), r.encode_value())));
        Ok((0..records.len() as u64)
            .map(|i| Offset(base + i))
            .collect())
    }

    fn append_encoded(
        &mut self,
        records: &[ChangeRecord],
        payloads: &[Vec<u8>],
    ) -> Result<Vec<Offset>> {
        debug_assert_eq!(records.len(), payloads.len());
        let base = self.records.len() as u64;
        self.records.extend(
            records
                .iter()
                .zip(payloads)
                .map(|(r, p)| (r.key.clone(), p.clone())),
        );
        Ok((0..records.len() as u64)
            .map(|i| Offset(base + i))
            .collect())
    }
}

impl ChangelogReader for MemoryChangelog {
    fn end_estimate(&mut self) -> Option<Offset> {
        Some(Offset(self.records.len() as u64))
    }

    fn read(&mut self, from: Offset, max: usize) -> Result<ChangelogBatch> {
        let start = (from.0 as usize).min(self.records.len());
        let end = start.saturating_add(max).min(self.records.len());
        let mut records = Vec::with_capacity(end - start);
        for (i, (k, v)) in self.records[start..end].iter().enumerate() {
            let off = Offset((start + i) as u64);
            let r = ChangeRecord::decode(k, v)
                .map_err(|e| Error::Codec(format!("changelog record at offset {}: {e}", off.0)))?;
            records.push((off, r));
        }
        Ok(ChangelogBatch {
            records,
            end: end == self.records.len(),
        })
    }
}

/// Progress of a restore, reported after every batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreProgress {
    /// Records read so far.
    pub read: u64,
    /// Records applied so far.
    pub applied: u64,
    /// Next offset to read.
    pub position: Offset,
    /// Records per second so far.
    pub rate: f64,
    /// Estimated end of the log, if the log offers one.
    pub end_estimate: Option<Offset>,
    /// Estimated time left at the current rate, if the end is estimated.
    pub eta: Option<std::time::Duration>,
}
