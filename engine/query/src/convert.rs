//! Conversions between the wire (`strata.v1` messages) and the state
//! crate: keys given as bytes or JSON, key filters, points in history, and
//! entries rendered as bytes and/or JSON.
//!
//! Every key a request names is checked against the table's key codec
//! before it is used, so a malformed key is INVALID_ARGUMENT, never a
//! silent miss.

use std::ops::Bound;

use strata_proto::v1 as pb;
use strata_state::{At, KeyRange, Point, Timestamp, Version, VersionFlags, Versioned};

use super::error::QueryError;
use strata_engine::TableMeta;

/// A key as a request names it.
pub(crate) enum KeyInput {
    /// Bytes in the table's key codec.
    Bytes(Vec<u8>),
    /// JSON text, encoded with the table's key codec.
    Json(String),
}

impl From<pb::get_request::KeyRef> for KeyInput {
    fn from(k: pb::get_request::KeyRef) -> Self {
        match k {
            pb::get_request::KeyRef::Key(b) => KeyInput::Bytes(b),
            pb::get_request::KeyRef::KeyJson(j) => KeyInput::Json(j),
        }
    }
}

impl From<pb::history_request::KeyRef> for KeyInput {
    fn from(k: pb::history_request::KeyRef) -> Self {
        match k {
            pb::history_request::KeyRef::Key(b) => KeyInput::Bytes(b),
            pb::history_request::KeyRef::KeyJson(j) => KeyInput::Json(j),
        }
    }
}

impl From<pb::key_bound::KeyRef> for KeyInput {
    fn from(k: pb::key_bound::KeyRef) -> Self {
        match k {
            pb::key_bound::KeyRef::Key(b) => KeyInput::Bytes(b),
            pb::key_bound::KeyRef::KeyJson(j) => KeyInput::Json(j),
        }
    }
}

/// The table bytes of a key, checked against the table's key codec.
pub(crate) fn key_bytes(meta: &TableMeta, key: Option<KeyInput>) -> Result<Vec<u8>, QueryError> {
    match key {
        None => Err(QueryError::invalid(
            "no key: set `key` (bytes in the table's key codec) or `key_json`",
        )),
        Some(KeyInput::Json(text)) => (meta.codecs.key_from_json)(&text).map_err(|e| {
            QueryError::invalid(format!("key_json {text:?} for table {:?}: {e}", meta.name))
        }),
        Some(KeyInput::Bytes(bytes)) => {
            (meta.codecs.key_to_json)(&bytes).map_err(|e| {
                QueryError::invalid(format!(
                    "key bytes {} for table {:?}: {e}; send the key as `key_json`, or encode it with the table's key codec",
                    strata_state::codec::display_key(&bytes),
                    meta.name
                ))
            })?;
            Ok(bytes)
        }
    }
}

/// Which state a read sees.
pub(crate) fn at(at: Option<pb::At>) -> At {
    match at.and_then(|a| a.point) {
        None | Some(pb::at::Point::Latest(_)) => At::Latest,
        Some(pb::at::Point::Version(v)) => At::Version(Version(v)),
        Some(pb::at::Point::TimeMs(t)) => At::Time(Timestamp(t)),
    }
}

/// A bound of a history listing.
pub(crate) fn point(p: Option<pb::Point>) -> Option<Point> {
    match p.and_then(|p| p.point)? {
        pb::point::Point::Version(v) => Some(Point::Version(Version(v))),
        pb::point::Point::TimeMs(t) => Some(Point::Time(Timestamp(t))),
    }
}

/// The keys a filter selects, and the key itself when it names exactly one.
pub(crate) fn key_filter(
    meta: &TableMeta,
    f: Option<pb::KeyFilter>,
) -> Result<(KeyRange, Option<Vec<u8>>), QueryError> {
    use pb::key_filter::Filter;
    Ok(match f.and_then(|f| f.filter) {
        None => (KeyRange::all(), None),
        Some(Filter::Prefix(p)) => (KeyRange::prefix(p), None),
        Some(Filter::PrefixUtf8(p)) => (KeyRange::prefix(p.into_bytes()), None),
        Some(Filter::Key(k)) => single(key_bytes(meta, Some(KeyInput::Bytes(k)))?),
        Some(Filter::KeyJson(j)) => single(key_bytes(meta, Some(KeyInput::Json(j)))?),
        Some(Filter::Range(r)) => {
            let start = bound(meta, r.start, true)?;
            let end = bound(meta, r.end, false)?;
            (KeyRange { start, end }, None)
        }
    })
}

fn single(k: Vec<u8>) -> (KeyRange, Option<Vec<u8>>) {
    (
        KeyRange {
            start: Bound::Included(k.clone()),
            end: Bound::Included(k.clone()),
        },
        Some(k),
    )
}

fn bound(
    meta: &TableMeta,
    b: Option<pb::KeyBound>,
    is_start: bool,
) -> Result<Bound<Vec<u8>>, QueryError> {
    let Some(b) = b else {
        return Ok(Bound::Unbounded);
    };
    let Some(k) = b.key_ref else {
        return Err(QueryError::invalid(
            "a key range bound without a key: set its `key` or `key_json`, or leave the bound unset",
        ));
    };
    let key = key_bytes(meta, Some(k.into()))?;
    Ok(if b.inclusive.unwrap_or(is_start) {
        Bound::Included(key)
    } else {
        Bound::Excluded(key)
    })
}

/// Which representations a reply carries.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Repr {
    pub bytes: bool,
    pub json: bool,
}

impl Repr {
    pub(crate) fn of(options: Option<&pb::RequestOptions>) -> Repr {
        match options.map(|o| o.representation()).unwrap_or_default() {
            pb::Representation::Bytes => Repr {
                bytes: true,
                json: false,
            },
            pb::Representation::Json => Repr {
                bytes: false,
                json: true,
            },
            pb::Representation::Unspecified | pb::Representation::Both => Repr {
                bytes: true,
                json: true,
            },
        }
    }
}

/// Renders keys and values of one table in the requested representations.
#[derive(Clone)]
pub(crate) struct Render<'a> {
    pub meta: &'a TableMeta,
    pub repr: Repr,
}

impl Render<'_> {
    pub(crate) fn key(&self, key: &[u8]) -> Vec<u8> {
        if self.repr.bytes {
            key.to_vec()
        } else {
            Vec::new()
        }
    }

    /// The key as JSON; empty when not asked for or not renderable (which
    /// cannot happen for a key that was stored through the table's codec).
    pub(crate) fn key_json(&self, key: &[u8]) -> String {
        if !self.repr.json {
            return String::new();
        }
        (self.meta.codecs.key_to_json)(key).unwrap_or_else(|e| {
            tracing::debug!(table = %self.meta.name, error = %e, "a stored key does not render as JSON");
            String::new()
        })
    }

    fn value_json(&self, value: &[u8]) -> String {
        if !self.repr.json {
            return String::new();
        }
        (self.meta.codecs.value_to_json)(value).unwrap_or_else(|e| {
            tracing::debug!(table = %self.meta.name, error = %e, "a stored value does not render as JSON");
            String::new()
        })
    }

    /// An entry of a live value.
    pub(crate) fn entry(&self, v: Versioned) -> pb::Entry {
        let value_json = self.value_json(&v.value);
        pb::Entry {
            version: v.version.0,
            time_ms: v.time.0,
            flags: Some(flags(v.flags)),
            lineage: v.lineage.map(lineage),
            deleted: false,
            value: if self.repr.bytes { v.value } else { Vec::new() },
            value_json,
        }
    }

    /// An entry of a history listing (a deletion has no value).
    pub(crate) fn history_entry(&self, h: strata_state::HistoryEntry) -> pb::Entry {
        match h.value {
            Some(value) => self.entry(Versioned {
                version: h.version,
                time: h.time,
                flags: h.flags,
                lineage: h.lineage,
                value,
            }),
            None => pb::Entry {
                version: h.version.0,
                time_ms: h.time.0,
                flags: Some(flags(h.flags)),
                lineage: h.lineage.map(lineage),
                deleted: true,
                value: Vec::new(),
                value_json: String::new(),
            },
        }
    }
}

fn flags(f: VersionFlags) -> pb::Flags {
    pb::Flags {
        rewind: f.contains(VersionFlags::REWIND),
        replay: f.contains(VersionFlags::REPLAY),
    }
}

fn lineage(l: strata_state::Lineage) -> pb::Lineage {
    pb::Lineage {
        topic: l.topic,
        partition: l.partition.0,
        offset: l.offset.0,
    }
}

/// A replay's progress on the wire.
pub(crate) fn replay_progress(r: &strata_engine::replay::ReplayProgress) -> pb::ReplayProgress {
    use strata_engine::replay::ReplayState as S;
    let offsets = |v: &[strata_engine::replay::TopicPosition]| {
        v.iter()
            .map(|t| pb::TopicOffset {
                topic: t.topic.clone(),
                offset: t.offset.0,
            })
            .collect()
    };
    pb::ReplayProgress {
        table: r.table.clone(),
        state: match r.state {
            S::Planned => pb::ReplayState::Planned,
            S::Running => pb::ReplayState::Running,
            S::Done => pb::ReplayState::Done,
            S::Cancelled => pb::ReplayState::Cancelled,
        } as i32,
        cut_time_ms: r.cut.0,
        seek: offsets(&r.seek),
        until: offsets(&r.until),
        position: offsets(&r.position),
        records: r.records,
        remaining: r.remaining,
        rate: r.rate,
        started_ms: r.started.0,
        ended_ms: r.ended.map_or(0, |t| t.0),
    }
}
