//! Ordered scans over a key range at the latest version, a version or a
//! time, in pages with resume tokens.
//!
//! A scan is pinned to one version: the first page resolves `at`, and the
//! token carries that version, so later pages read the same state even
//! while the owner commits. Tokens carry a CRC and the partition identity;
//! anything else is rejected as an invalid token.

use std::ops::Bound;

use crate::layout::{self, Entry, EntryKind};
use crate::store::{Cf, KvCursor, KvStore};
use crate::types::Version;
use crate::{Error, Result};

use super::read::{At, PartitionReader, Versioned};

/// A range of user keys (encoded bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            start: Bound::Included(start.into()),
            end: Bound::Excluded(end.into()),
        }
    }

    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> KeyRange {
        let p: Vec<u8> = prefix.into();
        // The smallest key greater than every key with the prefix: drop
        // trailing 0xFF bytes and increment the last byte.
        let mut end = p.clone();
        while end.last() == Some(&0xFF) {
            end.pop();
        }
        let end = match end.last_mut() {
            Some(b) => {
                *b += 1;
                Bound::Excluded(end)
            }
            None => Bound::Unbounded,
        };
        KeyRange {
            start: Bound::Included(p),
            end,
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= &s[..],
            Bound::Excluded(s) => key > &s[..],
            Bound::Unbounded => true,
        };
        above && !self.is_past_end(key)
    }

    /// Whether `key` lies beyond the range's end.
    pub fn is_past_end(&self, key: &[u8]) -> bool {
        match &self.end {
            Bound::Included(e) => key > &e[..],
            Bound::Excluded(e) => key >= &e[..],
            Bound::Unbounded => false,
        }
    }
}

/// An opaque position to resume a scan from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanToken(pub Vec<u8>);

/// A scan request.
#[derive(Clone, Debug)]
pub struct ScanRequest {
    /// The keys to scan.
    pub range: KeyRange,
    /// The state to read (ignored when resuming: the token pins it).
    pub at: At,
    /// Most entries in the page (at least 1).
    pub limit: usize,
    /// The previous page's token, to resume.
    pub token: Option<ScanToken>,
}

/// One page of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    /// Live keys and their values at `version`, in key order.
    pub items: Vec<(Vec<u8>, Versioned)>,
    /// The version the whole scan reads.
    pub version: Version,
    /// Where to resume, if there is more.
    pub next: Option<ScanToken>,
}

const TOKEN_FORMAT: u8 = 1;

impl<S: KvStore> PartitionReader<S> {
    /// Ties a token to its table partition and the scanned range.
    fn identity_hash(&self, range: &KeyRange) -> u32 {
        let loc = &self.shared.loc;
        let mut h = crc32fast::Hasher::new();
        h.update(format!("{}/{}", loc.table, loc.partition).as_bytes());
        for b in [&range.start, &range.end] {
            match b {
                Bound::Included(k) => {
                    h.update(&[1]);
                    h.update(&(k.len() as u64).to_be_bytes());
                    h.update(k);
                }
                Bound::Excluded(k) => {
                    h.update(&[2]);
                    h.update(&(k.len() as u64).to_be_bytes());
                    h.update(k);
                }
                Bound::Unbounded => h.update(&[0]),
            }
        }
        h.finalize()
    }

    fn encode_token(&self, range: &KeyRange, version: Version, after: &[u8]) -> ScanToken {
        let mut out = vec![TOKEN_FORMAT];
        out.extend_from_slice(&version.0.to_be_bytes());
        out.extend_from_slice(&self.identity_hash(range).to_be_bytes());
        out.extend_from_slice(after);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        ScanToken(out)
    }

    fn decode_token(&self, range: &KeyRange, t: &ScanToken) -> Result<(Version, Vec<u8>)> {
        let bad = |reason: &str| Error::InvalidScanToken {
            location: self.shared.loc(),
            reason: reason.into(),
        };
        let b = &t.0;
        if b.len() < 17 {
            return Err(bad("too short"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_be_bytes() != crc {
            return Err(bad("checksum mismatch (truncated or altered)"));
        }
        if body[0] != TOKEN_FORMAT {
            return Err(bad("unknown token format"));
        }
        let version = Version(u64::from_be_bytes(
            body[1..9].try_into().map_err(|_| bad("version"))?,
        ));
        let id = u32::from_be_bytes(body[9..13].try_into().map_err(|_| bad("identity"))?);
        if id != self.identity_hash(range) {
            return Err(bad(
                "the token belongs to another table, partition or key range",
            ));
        }
        Ok((version, body[13..].to_vec()))
    }

    /// Reads one page of a scan.
    pub fn scan(&self, req: &ScanRequest) -> Result<ScanPage> {
        if req.limit == 0 {
            return Err(Error::InvalidRequest {
                location: self.shared.loc(),
                reason: "scan limit must be at least 1".into(),
            });
        }
        let (version, start) = match &req.token {
            Some(t) => {
                let (v, after) = self.decode_token(&req.range, t)?;
                if v > self.shared.latest() {
                    return Err(Error::InvalidScanToken {
                        location: self.shared.loc(),
                        reason: format!("it names {v}, which is not committed"),
                    });
                }
                // Re-check retention: history may have expired between pages.
                self.resolve(At::Version(v))?;
                (v, Bound::Excluded(after))
            }
            None => (self.resolve(req.at)?, req.range.start.clone()),
        };
        let range = KeyRange {
            start,
            end: req.range.end.clone(),
        };
        let scan = Scan {
            whole: &req.range,
            range: &range,
            version,
            limit: req.limit,
        };
        if version == self.shared.latest() {
            let page = self.scan_latest(&scan)?;
            // A commit that raced the scan may have changed keys the latest
            // table no longer shows as of `version`: read history instead.
            if self.shared.latest() == version {
                return Ok(page);
            }
        }
        self.scan_history(&scan)
    }

    /// A page: `resume_after` is the last key examined when the page stops
    /// early (limit reached, or the examination budget spent on absent keys).
    fn finish(
        &self,
        scan: &Scan<'_>,
        items: Vec<(Vec<u8>, Versioned)>,
        resume_after: Option<Vec<u8>>,
    ) -> ScanPage {
        let next = resume_after.map(|k| self.encode_token(scan.whole, scan.version, &k));
        ScanPage {
            items,
            version: scan.version,
            next,
        }
    }

    fn scan_latest(&self, scan: &Scan<'_>) -> Result<ScanPage> {
        let (range, version, limit) = (scan.range, scan.version, scan.limit);
        let s = &self.shared;
        let mut c = s.cursor(Cf::Latest)?;
        match &range.start {
            Bound::Included(k) => c.seek(k),
            Bound::Excluded(k) => {
                c.seek(k);
                if c.valid() && c.key() == &k[..] {
                    c.next();
                }
            }
            Bound::Unbounded => c.seek_to_first(),
        }
        let mut items: Vec<(Vec<u8>, Versioned)> = Vec::new();
        let mut resume = None;
        while c.valid() {
            let key = c.key();
            if range.is_past_end(key) {
                break;
            }
            if items.len() == limit {
                resume = items.last().map(|(k, _)| k.clone());
                break;
            }
            let e = Entry::decode(c.value()).map_err(|d| s.corrupt(Some(key), d))?;
            let item = if e.version > version {
                self.entry_at(key, version)?
            } else {
                Some(e)
            };
            if let Some(e) = item.filter(|e| e.kind == EntryKind::Value) {
                items.push((
                    key.to_vec(),
                    Versioned {
                        version: e.version,
                        time: e.time,
                        flags: e.flags,
                        lineage: e.lineage,
                        value: e.value,
                    },
                ));
            }
            c.next();
        }
        s.cursor_status(&c, None)?;
        Ok(self.finish(scan, items, resume))
    }

    fn scan_history(&self, scan: &Scan<'_>) -> Result<ScanPage> {
        let (range, version, limit) = (scan.range, scan.version, scan.limit);
        let s = &self.shared;
        let mut c = s.cursor(Cf::History)?;
        match &range.start {
            Bound::Included(k) => c.seek(&layout::history_prefix(k)),
            Bound::Excluded(k) => c.seek(&layout::history_after_key(k)),
            Bound::Unbounded => c.seek_to_first(),
        }
        let mut items: Vec<(Vec<u8>, Versioned)> = Vec::new();
        // Keys absent at `version` cost work too: bound what one page
        // examines, and resume after the last key examined.
        let budget = limit.saturating_mul(EXAMINE_FACTOR).max(MIN_EXAMINED);
        let mut examined = 0usize;
        let mut last_examined: Option<Vec<u8>> = None;
        let mut resume = None;
        while c.valid() {
            let (key, _) = layout::split_history_key(c.key()).map_err(|d| s.corrupt(None, d))?;
            if range.is_past_end(&key) {
                break;
            }
            if examined == budget {
                resume = last_examined.take();
                break;
            }
            examined += 1;
            if let Some(e) = self
                .entry_at(&key, version)?
                .filter(|e| e.kind == EntryKind::Value)
            {
                if items.len() == limit {
                    resume = last_examined.take();
                    break;
                }
                items.push((
                    key.clone(),
                    Versioned {
                        version: e.version,
                        time: e.time,
                        flags: e.flags,
                        lineage: e.lineage,
                        value: e.value,
                    },
                ));
            }
            c.seek(&layout::history_after_key(&key));
            last_examined = Some(key);
        }
        s.cursor_status(&c, None)?;
        Ok(self.finish(scan, items, resume))
    }
}

/// One page's parameters.
struct Scan<'a> {
    /// The range as requested (tokens are tied to it).
    whole: &'a KeyRange,
    /// What is left of it for this page.
    range: &'a KeyRange,
    version: Version,
    limit: usize,
}

/// A history scan examines at most `limit * EXAMINE_FACTOR` keys (and at
/// least `MIN_EXAMINED`) before returning a page early with a token.
const EXAMINE_FACTOR: usize = 16;
const MIN_EXAMINED: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        let r = KeyRange::prefix(b"ab".to_vec());
        assert!(r.contains(b"ab"));
        assert!(r.contains(b"ab\xff\xff"));
        assert!(!r.contains(b"ac"));
        assert!(!r.contains(b"aa\xff"));
        let r = KeyRange::prefix(vec![0x01, 0xFF]);
        assert!(r.contains(&[0x01, 0xFF, 0x00]));
        assert!(!r.contains(&[0x02]));
        assert_eq!(KeyRange::prefix(vec![0xFF]).end, Bound::Unbounded);
    }
}
