//! The storage format: which column family holds what, under which key, in
//! which byte layout. `docs/storage.md` is the prose version.
//!
//! - `latest`:   user key → [`Entry`] of the key's newest live version.
//! - `history`:  escape(user key) ++ !version (big-endian) → [`Entry`]; a
//!   key's versions are contiguous, newest first, so "the value at version
//!   v" is one seek.
//! - `versions`: version (big-endian) → [`VersionRecord`]: the version log,
//!   in commit order, used by diffs, rewinds, change feeds and pruning.
//! - `commits`:  commit time ++ last version (big-endian) → empty: one
//!   entry per run of versions sharing a commit time; resolves "as of time t" with one reverse seek.
//! - `default`:  partition metadata, the checkpoint, the retention policy and
//!   the pruning cursor, each bincode behind a CRC.
//!
//! Every stored value (the empty `commits` values aside) ends with a CRC-32 of the bytes before it, so a
//! flipped bit is reported as corruption, never decoded into a wrong value.

use serde::{Serialize, de::DeserializeOwned};

use crate::codec::{ESCAPED_TERMINATOR, escape_into, unescape};
use crate::types::{Lineage, Timestamp, Version, VersionFlags};

/// Format version of entries and records written by this build.
pub const FORMAT_V1: u8 = 1;

/// Meta keys.
pub mod meta {
    /// [`crate::layout::PartitionMeta`].
    pub const PARTITION: &[u8] = b"partition";
    /// [`crate::Checkpoint`].
    pub const CHECKPOINT: &[u8] = b"checkpoint";
    /// [`crate::Retention`].
    pub const RETENTION: &[u8] = b"retention";
    /// [`crate::layout::PruneState`].
    pub const PRUNE: &[u8] = b"prune";
}

/// What an entry says about its key at its version.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// The key was deleted.
    Tombstone = 0,
    /// The key has a value.
    Value = 1,
    /// Retention removed this version and everything older for the key.
    Expired = 2,
}

/// One version of one key, as stored in `latest` and `history` and as sent
/// to the changelog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The version.
    pub version: Version,
    /// Its commit time.
    pub time: Timestamp,
    /// Its flags.
    pub flags: VersionFlags,
    /// Value, tombstone or expiry marker.
    pub kind: EntryKind,
    /// The input record that caused it.
    pub lineage: Option<Lineage>,
    /// The value bytes (empty unless `kind` is `Value`).
    pub value: Vec<u8>,
}

/// Why bytes could not be decoded.
pub type DecodeError = String;

fn crc_seal(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn crc_open(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() < 5 {
        return Err(format!("record of {} bytes is too short", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        ));
    }
    if body[0] != FORMAT_V1 {
        return Err(format!(
            "unknown record format {}; written by a newer version of strata?",
            body[0]
        ));
    }
    Ok(&body[1..])
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if b.len() < n {
        return Err(format!(
            "record truncated: needed {n} more bytes, have {}",
            b.len()
        ));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_u64(b: &mut &[u8]) -> Result<u64, DecodeError> {
    let h = take(b, 8)?;
    Ok(u64::from_be_bytes([
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
    ]))
}

/// Bytes of an entry besides its lineage and value: format, version,
/// time, flags, kind, lineage length, CRC.
const ENTRY_OVERHEAD: usize = 1 + 8 + 8 + 1 + 1 + 4 + 4;
/// Room reserved for an encoded lineage (a topic name and two varints).
const LINEAGE_RESERVE: usize = 64;

/// Encodes an entry from borrowed parts, CRC included, in one allocation
/// (for a lineage of usual size).
pub fn encode_entry(
    version: Version,
    time: Timestamp,
    flags: VersionFlags,
    kind: EntryKind,
    lineage: Option<&Lineage>,
    value: &[u8],
) -> Vec<u8> {
    let reserve = lineage.map_or(0, |_| LINEAGE_RESERVE);
    let mut out = Vec::with_capacity(ENTRY_OVERHEAD + reserve + value.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&version.0.to_be_bytes());
    out.extend_from_slice(&time.0.to_be_bytes());
    out.push(flags.0);
    out.push(kind as u8);
    let len_at = out.len();
    out.extend_from_slice(&0u32.to_be_bytes());
    if let Some(l) = lineage {
        // Writing to a Vec cannot fail; a failed encoding leaves no lineage.
        if bincode::serde::encode_into_std_write(l, &mut out, bincode::config::standard()).is_err()
        {
            out.truncate(len_at + 4);
        }
    }
    let lin_len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&lin_len.to_be_bytes());
    out.extend_from_slice(value);
    crc_seal(&mut out);
    out
}

impl Entry {
    /// Encodes the entry, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        encode_entry(
            self.version,
            self.time,
            self.flags,
            self.kind,
            self.lineage.as_ref(),
            &self.value,
        )
    }

    /// Decodes an entry, checking its CRC.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut b = crc_open(bytes)?;
        let version = Version(take_u64(&mut b)?);
        let time = Timestamp(take_u64(&mut b)?);
        let flags = VersionFlags(take(&mut b, 1)?[0]);
        let kind = match take(&mut b, 1)?[0] {
            0 => EntryKind::Tombstone,
            1 => EntryKind::Value,
            2 => EntryKind::Expired,
            k => return Err(format!("unknown entry kind {k}")),
        };
        let lin = take(&mut b, 4)?;
        let lin_len = u32::from_be_bytes([lin[0], lin[1], lin[2], lin[3]]) as usize;
        let lineage = if lin_len == 0 {
            None
        } else {
            let raw = take(&mut b, lin_len)?;
            let (l, _) = bincode::serde::decode_from_slice(raw, bincode::config::standard())
                .map_err(|e| format!("bad lineage: {e}"))?;
            Some(l)
        };
        Ok(Entry {
            version,
            time,
            flags,
            kind,
            lineage,
            value: b.to_vec(),
        })
    }

    /// Reads only the version of an encoded entry (after its CRC check).
    pub fn peek_version(bytes: &[u8]) -> Result<Version, DecodeError> {
        let mut b = crc_open(bytes)?;
        Ok(Version(take_u64(&mut b)?))
    }
}

/// A line of the version log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    /// Commit time of the version.
    pub time: Timestamp,
    /// Flags of the version.
    pub flags: VersionFlags,
    /// Whether the version deleted its key.
    pub deleted: bool,
    /// Offset of the version's record in the changelog, when it has one.
    pub changelog_offset: Option<u64>,
    /// The user key.
    pub key: Vec<u8>,
}

/// Encodes a [`VersionRecord`] from borrowed fields into `out` (cleared
/// first), so a commit can reuse one buffer for all its records.
pub fn encode_version_record(
    time: Timestamp,
    flags: VersionFlags,
    deleted: bool,
    changelog_offset: Option<u64>,
    key: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(FORMAT_V1);
    out.extend_from_slice(&time.0.to_be_bytes());
    out.push(flags.0);
    out.push(deleted as u8);
    match changelog_offset {
        Some(o) => {
            out.push(1);
            out.extend_from_slice(&o.to_be_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(key);
    crc_seal(out);
}

impl VersionRecord {
    /// Encodes the record, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.key.len());
        encode_version_record(
            self.time,
            self.flags,
            self.deleted,
            self.changelog_offset,
            &self.key,
            &mut out,
        );
        out
    }

    /// Decodes a record, checking its CRC.
    pub fn decode(bytes: &[u8]) -> Result<VersionRecord, DecodeError> {
        let mut b = crc_open(bytes)?;
        let time = Timestamp(take_u64(&mut b)?);
        let flags = VersionFlags(take(&mut b, 1)?[0]);
        let deleted = take(&mut b, 1)?[0] == 1;
        let changelog_offset = match take(&mut b, 1)?[0] {
            0 => None,
            1 => Some(take_u64(&mut b)?),
            x => return Err(format!("bad changelog marker {x}")),
        };
        Ok(VersionRecord {
            time,
            flags,
            deleted,
            changelog_offset,
            key: b.to_vec(),
        })
    }
}

/// The `history` key of `key` at `version`.
pub fn history_key(key: &[u8], version: Version) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    history_key_into(key, version, &mut out);
    out
}

/// [`history_key`] into `out` (cleared first).
pub fn history_key_into(key: &[u8], version: Version, out: &mut Vec<u8>) {
    out.clear();
    escape_into(key, out);
    out.extend_from_slice(&(!version.0).to_be_bytes());
}

/// The escaped prefix that all of `key`'s history entries share.
pub fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(key, &mut out);
    out
}

/// A `history` key that sorts after every entry of `key` and before every
/// entry of any greater key.
pub fn history_after_key(key: &[u8]) -> Vec<u8> {
    let mut out = history_prefix(key);
    let n = out.len();
    debug_assert_eq!(&out[n - 2..], &ESCAPED_TERMINATOR);
    out[n - 1] = 0x02;
    out
}

/// Splits a `history` key into the user key and the version.
pub fn split_history_key(hkey: &[u8]) -> Result<(Vec<u8>, Version), DecodeError> {
    let (key, n) = unescape(hkey).ok_or_else(|| "malformed history key".to_string())?;
    let rest = &hkey[n..];
    let arr: [u8; 8] = rest
        .try_into()
        .map_err(|_| "history key without a version".to_string())?;
    Ok((key, Version(!u64::from_be_bytes(arr))))
}

/// The `versions` key of a version.
pub fn version_key(v: Version) -> [u8; 8] {
    v.0.to_be_bytes()
}

/// Decodes a `versions` key.
pub fn parse_version_key(k: &[u8]) -> Result<Version, DecodeError> {
    let arr: [u8; 8] = k
        .try_into()
        .map_err(|_| format!("version key of {} bytes", k.len()))?;
    Ok(Version(u64::from_be_bytes(arr)))
}

/// The `commits` key of a commit.
pub fn commit_key(time: Timestamp, last: Version) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time.0.to_be_bytes());
    k[8..].copy_from_slice(&last.0.to_be_bytes());
    k
}

/// Decodes a `commits` key into (time, last version).
pub fn parse_commit_key(k: &[u8]) -> Result<(Timestamp, Version), DecodeError> {
    if k.len() != 16 {
        return Err(format!("commit key of {} bytes", k.len()));
    }
    let t = u64::from_be_bytes(k[..8].try_into().map_err(|_| "commit key")?);
    let v = u64::from_be_bytes(k[8..].try_into().map_err(|_| "commit key")?);
    Ok((Timestamp(t), Version(v)))
}

/// Encodes a metadata value: bincode behind a format byte and a CRC.
pub fn seal_meta<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // Encoding plain structs into a Vec cannot fail.
    let _ = bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard());
    crc_seal(&mut out);
    out
}

/// Decodes a metadata value written by [`seal_meta`].
pub fn open_meta<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let body = crc_open(bytes)?;
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| format!("bad metadata: {e}"))
}

/// Identity of the partition a store belongs to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionMeta {
    /// The table's name.
    pub table: String,
    /// The partition number.
    pub partition: u32,
}

/// Where background pruning has got to.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneState {
    /// Versions up to here have been processed by the pruner.
    pub processed: u64,
    /// The last version whose superseded history was pruned: the state at
    /// this version is intact, states before it are not, so reads, diffs
    /// and rewinds to versions below it are beyond retention.
    pub floor: u64,
    /// A code of the retention policy `processed` was reached under.
    pub policy: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Offset, Partition};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entry_round_trips(v: u64, t: u64, f: u8, kind in 0u8..3, value: Vec<u8>, lin: Option<(String, u32, u64)>) {
            let kind = [EntryKind::Tombstone, EntryKind::Value, EntryKind::Expired][kind as usize];
            let e = Entry {
                version: Version(v), time: Timestamp(t), flags: VersionFlags(f), kind,
                lineage: lin.map(|(topic, p, o)| Lineage { topic, partition: Partition(p), offset: Offset(o) }),
                value,
            };
            let bytes = e.encode();
            prop_assert_eq!(Entry::peek_version(&bytes).unwrap(), e.version);
            prop_assert_eq!(Entry::decode(&bytes).unwrap(), e);
        }

        #[test]
        fn any_flipped_bit_is_detected(value: Vec<u8>, bit in 0usize..1000) {
            let e = Entry { version: Version(3), time: Timestamp(4), flags: VersionFlags::NONE, kind: EntryKind::Value, lineage: None, value };
            let mut bytes = e.encode();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Entry::decode(&bytes).is_err());
        }

        #[test]
        fn history_keys_sort_by_key_then_newest_first(a: Vec<u8>, b: Vec<u8>, va: u64, vb: u64) {
            let (ka, kb) = (history_key(&a, Version(va)), history_key(&b, Version(vb)));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b).then(vb.cmp(&va)));
            prop_assert_eq!(split_history_key(&ka).unwrap(), (a.clone(), Version(va)));
            prop_assert!(history_after_key(&a) > ka);
            if b > a { prop_assert!(history_after_key(&a) < kb); }
        }

        #[test]
        fn version_records_round_trip(t: u64, f: u8, deleted: bool, off: Option<u64>, key: Vec<u8>) {
            let r = VersionRecord { time: Timestamp(t), flags: VersionFlags(f), deleted, changelog_offset: off, key };
            prop_assert_eq!(VersionRecord::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn truncated_and_unknown_format_are_errors() {
        assert!(Entry::decode(&[]).is_err());
        assert!(Entry::decode(&[1, 2, 3]).is_err());
        let mut body = vec![9u8; 30];
        crc_seal(&mut body);
        assert!(
            Entry::decode(&body)
                .unwrap_err()
                .contains("unknown record format 9")
        );
    }
}
