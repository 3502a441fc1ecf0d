//! Rendering replies: aligned columns for people, JSON documents for
//! programs. The JSON shapes are the CLI's stable output contract
//! (docs/cli.md): keys and values appear as JSON values (parsed from the
//! server's `*_json` text), with `*_hex` fallbacks when a table has no JSON
//! view; times appear as RFC 3339 (`time`) and as epoch milliseconds
//! (`time_ms`).

use std::io::Write;

use serde_json::{Value, json};
use strata_proto::v1 as pb;

use crate::error::code_name;
use crate::point::format_time;

/// Aligned columns, printed as rows arrive. Column widths only grow, so a
/// listing printed page by page stays aligned unless a later page holds a
/// wider cell. The last column is never padded.
pub struct Columns {
    headers: Vec<&'static str>,
    widths: Vec<usize>,
    header_printed: bool,
}

impl Columns {
    /// Columns with these headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Columns {
            widths: headers.iter().map(|h| h.chars().count()).collect(),
            headers: headers.to_vec(),
            header_printed: false,
        }
    }

    /// Prints rows (and the header before the first batch).
    pub fn print(&mut self, rows: &[Vec<String>]) {
        for r in rows {
            debug_assert_eq!(r.len(), self.widths.len());
            for (w, c) in self.widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let out = std::io::stdout();
        let mut out = out.lock();
        if !self.header_printed {
            self.header_printed = true;
            let h: Vec<String> = self.headers.iter().map(|s| s.to_string()).collect();
            let _ = writeln!(out, "{}", self.line(&h));
        }
        for r in rows {
            let _ = writeln!(out, "{}", self.line(r));
        }
        let _ = out.flush();
    }

    fn line(&self, cells: &[String]) -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&self.widths).enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    }
}

/// Prints one JSON document on one line.
pub fn print_json(v: &Value) {
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key or value as compact JSON text for a table cell (`0x<hex>` when it
/// has no JSON rendering).
pub fn cell(json_text: &str, bytes: &[u8]) -> String {
    match serde_json::from_str::<Value>(json_text) {
        Ok(v) => v.to_string(),
        Err(_) if json_text.is_empty() => format!("0x{}", hex(bytes)),
        Err(_) => json_text.to_string(),
    }
}

/// Inserts `name` (a JSON value) into `obj`, or `name_hex` when the JSON
/// text is not rendered.
fn put_json(obj: &mut serde_json::Map<String, Value>, name: &str, json_text: &str, bytes: &[u8]) {
    match serde_json::from_str::<Value>(json_text) {
        Ok(v) => {
            obj.insert(name.into(), v);
        }
        Err(_) => {
            obj.insert(name.into(), Value::Null);
            if !bytes.is_empty() {
                obj.insert(format!("{name}_hex"), Value::String(hex(bytes)));
            }
        }
    }
}

/// `{"key": ...}` (or `key_hex`) plus the given fields.
pub fn keyed(key_json: &str, key: &[u8], rest: Value) -> Value {
    let mut m = serde_json::Map::new();
    put_json(&mut m, "key", key_json, key);
    if let Value::Object(r) = rest {
        m.extend(r);
    }
    Value::Object(m)
}

/// An entry: version, times, flags, lineage, deletion and value.
pub fn entry_json(e: &pb::Entry) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("version".into(), json!(e.version));
    m.insert("time".into(), json!(format_time(e.time_ms)));
    m.insert("time_ms".into(), json!(e.time_ms));
    let f = e.flags.unwrap_or_default();
    m.insert(
        "flags".into(),
        json!({"rewind": f.rewind, "replay": f.replay}),
    );
    m.insert(
        "lineage".into(),
        e.lineage
            .as_ref()
            .map(|l| json!({"topic": l.topic, "partition": l.partition, "offset": l.offset}))
            .unwrap_or(Value::Null),
    );
    m.insert("deleted".into(), json!(e.deleted));
    put_json(&mut m, "value", &e.value_json, &e.value);
    Value::Object(m)
}

/// Who served a read.
pub fn served_json(s: &pb::Served) -> Value {
    let i = s.instance.clone().unwrap_or_default();
    json!({
        "partition": s.partition,
        "instance": {"id": i.id, "endpoint": i.endpoint},
        "hops": s.hops,
        "read_version": s.read_version,
        "latest_version": s.latest_version,
        "latest_time": format_time(s.latest_time_ms),
        "latest_time_ms": s.latest_time_ms,
        "stale": s.stale,
        "lag_records": s.lag_records,
    })
}

/// A partition that could not be read.
pub fn unavailable_json(u: &pb::UnavailablePartition) -> Value {
    json!({
        "partition": u.partition,
        "code": code_name(tonic::Code::from_i32(u.code)),
        "message": u.message,
        "owner": u.owner.as_ref().map(|o| json!({"id": o.id, "endpoint": o.endpoint})),
        "restoring": u.restoring.as_ref().map(|r| json!({
            "records": r.records, "rate": r.rate, "remaining": r.remaining,
        })),
    })
}

/// The "served by" cell: the instance id, with staleness.
pub fn served_by(s: Option<&pb::Served>) -> String {
    let Some(s) = s else { return "-".into() };
    let id = s.instance.as_ref().map(|i| i.id.as_str()).unwrap_or("?");
    if s.stale {
        format!("{id} (stale, {} behind)", s.lag_records)
    } else {
        id.to_string()
    }
}

/// The flags cell: `rewind`, `replay`, `deleted`, comma-separated.
pub fn flags_cell(e: &pb::Entry) -> String {
    let f = e.flags.unwrap_or_default();
    let mut v = Vec::new();
    if f.rewind {
        v.push("rewind");
    }
    if f.replay {
        v.push("replay");
    }
    if e.deleted {
        v.push("deleted");
    }
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// The lineage cell: `topic/partition@offset`.
pub fn lineage_cell(e: &pb::Entry) -> String {
    e.lineage
        .as_ref()
        .map(|l| format!("{}/{}@{}", l.topic, l.partition, l.offset))
        .unwrap_or_else(|| "-".into())
}

/// An entry's value cell (`(deleted)` for a deletion).
pub fn value_cell(e: &pb::Entry) -> String {
    if e.deleted {
        "(deleted)".into()
    } else {
        cell(&e.value_json, &e.value)
    }
}

/// Says on stderr which partitions a reply is missing. Returns whether any.
pub fn warn_unavailable(unavailable: &[pb::UnavailablePartition]) -> bool {
    for u in unavailable {
        let owner = u
            .owner
            .as_ref()
            .map(|o| format!(" (owner {} at {})", o.id, o.endpoint))
            .unwrap_or_default();
        let restoring = u
            .restoring
            .as_ref()
            .map(|r| format!(" (restoring: {} records read)", r.records))
            .unwrap_or_default();
        eprintln!(
            "warning: partition {} was not read: {}: {}{owner}{restoring}",
            u.partition,
            code_name(tonic::Code::from_i32(u.code)),
            u.message
        );
    }
    !unavailable.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert_eq!(cell("{ \"a\": 1 }", b""), r#"{"a":1}"#);
        assert_eq!(cell("", b"\x01\xff"), "0x01ff");
        let e = pb::Entry {
            deleted: true,
            flags: Some(pb::Flags {
                rewind: true,
                replay: false,
            }),
            ..Default::default()
        };
        assert_eq!(flags_cell(&e), "rewind,deleted");
        assert_eq!(value_cell(&e), "(deleted)");
    }

    #[test]
    fn json_falls_back_to_hex() {
        let v = keyed("", b"\x00k", json!({"x": 1}));
        assert_eq!(v, json!({"key": null, "key_hex": "006b", "x": 1}));
        let v = keyed("\"k\"", b"k", json!({}));
        assert_eq!(v, json!({"key": "k"}));
    }

    #[test]
    fn columns_align() {
        let mut c = Columns::new(&["A", "LONGER", "V"]);
        c.widths = vec![3, 6, 1];
        assert_eq!(
            c.line(&["x".into(), "1".into(), "value".into()]),
            "x    1       value"
        );
    }
}
