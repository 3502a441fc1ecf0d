//! `scan` and `diff`: listings across partitions, followed page by page.
//! Partitions the server could not read are said on stderr as they are
//! met, and make the command end with the "incomplete" exit code after
//! everything readable was printed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use strata_proto::v1 as pb;

use super::{at, key_filter};
use crate::cli::{DiffArgs, KeysArgs, Output, ScanArgs};
use crate::conn::Conn;
use crate::error::CliError;
use crate::output::{
    Columns, cell, entry_json, keyed, print_json, served_by, served_json, unavailable_json,
    value_cell, warn_unavailable,
};
use crate::point::{Point, format_time};
use crate::positions::format_partition_versions;

/// Tracks the partitions a paged listing missed, warning once for each.
#[derive(Default)]
struct Missing(BTreeSet<u32>);

impl Missing {
    fn page(&mut self, unavailable: &[pb::UnavailablePartition]) {
        let new: Vec<pb::UnavailablePartition> = unavailable
            .iter()
            .filter(|u| self.0.insert(u.partition))
            .cloned()
            .collect();
        warn_unavailable(&new);
    }

    fn finish(self, what: &str) -> Result<(), CliError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self.0.iter().map(u32::to_string).collect();
        Err(CliError::Incomplete(format!(
            "the {what} is partial: partition(s) {} could not be read and their keys are missing",
            list.join(", ")
        )))
    }
}

/// `strata scan TABLE [--prefix P | --from K --to K] [--as-of T] ...`.
pub async fn scan(conn: &Conn, out: Output, a: ScanArgs) -> Result<(), CliError> {
    let mut client = conn.query();
    let point = a
        .at_version
        .map(Point::Version)
        .or(a.as_of.map(Point::TimeMs));
    let mut cols = Columns::new(&["KEY", "VERSION", "TIME", "PARTITION", "SERVED_BY", "VALUE"]);
    let mut served: BTreeMap<u32, pb::Served> = BTreeMap::new();
    let mut missing = Missing::default();
    let mut remaining = a.limit.unwrap_or(u64::MAX);
    let mut token = Vec::new();
    let mut printed = 0u64;
    while remaining > 0 {
        let page_size = match (a.page_size, u32::try_from(remaining)) {
            (0, Ok(r)) => r.min(1_000),
            (n, Ok(r)) => n.min(r),
            (n, Err(_)) => n,
        };
        let r = client
            .scan(conn.request(pb::ScanRequest {
                table: a.table.clone(),
                keys: key_filter(&a.keys),
                at: point.map(at),
                partition: a.partition,
                page_size,
                page_token: token,
                options: conn.options(),
            }))
            .await
            .map_err(|s| conn.fail(s))?
            .into_inner();
        missing.page(&r.unavailable);
        for s in &r.served {
            served.insert(s.partition, s.clone());
        }
        let take = r
            .items
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let items = &r.items[..take];
        remaining -= take as u64;
        printed += take as u64;
        let more = !r.next_page_token.is_empty();
        if out == Output::Json {
            print_json(&json!({
                "items": items.iter().map(|it| keyed(&it.key_json, &it.key, json!({
                    "partition": it.partition,
                    "entry": it.entry.as_ref().map(entry_json),
                }))).collect::<Vec<_>>(),
                "more": more || take < r.items.len(),
                "partial": r.partial,
                "unavailable": r.unavailable.iter().map(unavailable_json).collect::<Vec<_>>(),
                "served": r.served.iter().map(served_json).collect::<Vec<_>>(),
            }));
        } else {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|it| {
                    let e = it.entry.clone().unwrap_or_default();
                    vec![
                        cell(&it.key_json, &it.key),
                        e.version.to_string(),
                        format_time(e.time_ms),
                        it.partition.to_string(),
                        served_by(served.get(&it.partition)),
                        value_cell(&e),
                    ]
                })
                .collect();
            if !rows.is_empty() || printed == 0 {
                cols.print(&rows);
            }
        }
        if !more {
            break;
        }
        token = r.next_page_token;
    }
    missing.finish("scan")
}

/// `strata diff TABLE --from P [--to P] [--partition N] [--prefix P]`.
pub async fn diff(conn: &Conn, out: Output, a: DiffArgs) -> Result<(), CliError> {
    let mut client = conn.query();
    let keys = key_filter(&KeysArgs {
        prefix: a.prefix.clone(),
        ..Default::default()
    });
    let mut cols = Columns::new(&[
        "KEY",
        "PARTITION",
        "CHANGE",
        "FROM_VERSION",
        "TO_VERSION",
        "BEFORE",
        "AFTER",
    ]);
    let mut missing = Missing::default();
    let mut token = Vec::new();
    let mut first = true;
    loop {
        let r = client
            .diff(conn.request(pb::DiffRequest {
                table: a.table.clone(),
                from: Some(at(a.from)),
                to: a.to.map(at),
                keys: keys.clone(),
                partition: a.partition,
                page_size: a.page_size,
                page_token: token,
                options: conn.options(),
            }))
            .await
            .map_err(|s| conn.fail(s))?
            .into_inner();
        missing.page(&r.unavailable);
        let more = !r.next_page_token.is_empty();
        if out == Output::Json {
            print_json(&json!({
                "entries": r.entries.iter().map(|d| keyed(&d.key_json, &d.key, json!({
                    "partition": d.partition,
                    "before": d.before.as_ref().map(entry_json).unwrap_or(Value::Null),
                    "after": d.after.as_ref().map(entry_json).unwrap_or(Value::Null),
                }))).collect::<Vec<_>>(),
                "from_versions": r.from_versions.iter()
                    .map(|p| json!({"partition": p.partition, "version": p.version}))
                    .collect::<Vec<_>>(),
                "more": more,
                "partial": r.partial,
                "unavailable": r.unavailable.iter().map(unavailable_json).collect::<Vec<_>>(),
                "served": r.served.iter().map(served_json).collect::<Vec<_>>(),
            }));
        } else {
            if first && !r.from_versions.is_empty() {
                let to: Vec<pb::PartitionVersion> = r
                    .served
                    .iter()
                    .map(|s| pb::PartitionVersion {
                        partition: s.partition,
                        version: s.read_version,
                    })
                    .collect();
                eprintln!(
                    "diff from {} to {} (PARTITION:VERSION)",
                    format_partition_versions(&r.from_versions),
                    format_partition_versions(&to)
                );
            }
            let rows: Vec<Vec<String>> = r
                .entries
                .iter()
                .map(|d| {
                    let change = match (&d.before, &d.after) {
                        (None, Some(_)) => "added",
                        (Some(_), None) => "removed",
                        _ => "changed",
                    };
                    let ver = |e: &Option<pb::Entry>| {
                        e.as_ref()
                            .map(|e| e.version.to_string())
                            .unwrap_or_else(|| "-".into())
                    };
                    let val = |e: &Option<pb::Entry>| {
                        e.as_ref()
                            .map(value_cell)
                            .unwrap_or_else(|| "(absent)".into())
                    };
                    vec![
                        cell(&d.key_json, &d.key),
                        d.partition.to_string(),
                        change.into(),
                        ver(&d.before),
                        ver(&d.after),
                        val(&d.before),
                        val(&d.after),
                    ]
                })
                .collect();
            if !rows.is_empty() || first {
                cols.print(&rows);
            }
        }
        first = false;
        if !more {
            break;
        }
        token = r.next_page_token;
    }
    missing.finish("diff")
}
