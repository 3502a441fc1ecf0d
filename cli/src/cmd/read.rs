//! `get` and `history`: one key's value, and its versions.

use serde_json::{Value, json};
use strata_proto::v1 as pb;

use super::{at, bound};
use crate::cli::{GetArgs, HistoryArgs, Output};
use crate::conn::Conn;
use crate::error::CliError;
use crate::output::{
    Columns, entry_json, flags_cell, keyed, lineage_cell, print_json, served_by, served_json,
    value_cell,
};
use crate::point::{Point, format_time};

/// `strata get TABLE KEY [--at-version N | --as-of TIME]`.
pub async fn get(conn: &Conn, out: Output, a: GetArgs) -> Result<(), CliError> {
    let point = a
        .at_version
        .map(Point::Version)
        .or(a.as_of.map(Point::TimeMs));
    let r = conn
        .query()
        .get(conn.request(pb::GetRequest {
            table: a.table,
            key_ref: Some(pb::get_request::KeyRef::KeyJson(a.key)),
            at: point.map(at),
            options: conn.options(),
            partition: a.partition,
        }))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    let entry = match &r.outcome {
        Some(pb::get_response::Outcome::Found(e)) => Some(e),
        _ => None,
    };
    if out == Output::Json {
        print_json(&keyed(
            &r.key_json,
            &r.key,
            json!({
                "found": entry.is_some(),
                "entry": entry.map(entry_json).unwrap_or(Value::Null),
                "served": r.served.as_ref().map(served_json),
            }),
        ));
        return Ok(());
    }
    let partition = r
        .served
        .as_ref()
        .map(|s| s.partition.to_string())
        .unwrap_or_else(|| "-".into());
    let row = match entry {
        Some(e) => vec![
            crate::output::cell(&r.key_json, &r.key),
            e.version.to_string(),
            format_time(e.time_ms),
            partition,
            served_by(r.served.as_ref()),
            flags_cell(e),
            value_cell(e),
        ],
        None => vec![
            crate::output::cell(&r.key_json, &r.key),
            "-".into(),
            "-".into(),
            partition,
            served_by(r.served.as_ref()),
            "-".into(),
            format!(
                "(absent at version {})",
                r.served.as_ref().map(|s| s.read_version).unwrap_or(0)
            ),
        ],
    };
    Columns::new(&[
        "KEY",
        "VERSION",
        "TIME",
        "PARTITION",
        "SERVED_BY",
        "FLAGS",
        "VALUE",
    ])
    .print(&[row]);
    Ok(())
}

/// `strata history TABLE KEY [--from P] [--to P] [--asc] [--limit N]`.
pub async fn history(conn: &Conn, out: Output, a: HistoryArgs) -> Result<(), CliError> {
    let mut client = conn.query();
    let mut cols = Columns::new(&[
        "VERSION",
        "TIME",
        "PARTITION",
        "SERVED_BY",
        "FLAGS",
        "LINEAGE",
        "VALUE",
    ]);
    let mut remaining = a.limit.unwrap_or(u64::MAX);
    let mut token = Vec::new();
    let mut truncated = false;
    let mut printed = 0u64;
    while remaining > 0 {
        let r = client
            .history(conn.request(pb::HistoryRequest {
                table: a.table.clone(),
                key_ref: Some(pb::history_request::KeyRef::KeyJson(a.key.clone())),
                from: a.from.map(bound),
                to: a.to.map(bound),
                order: if a.asc {
                    pb::Order::Ascending
                } else {
                    pb::Order::Descending
                } as i32,
                limit: u32::try_from(remaining).unwrap_or(0),
                page_token: token,
                options: conn.options(),
                partition: a.partition,
            }))
            .await
            .map_err(|s| conn.fail(s))?
            .into_inner();
        let take = r
            .entries
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let entries = &r.entries[..take];
        remaining -= take as u64;
        printed += take as u64;
        truncated |= r.truncated_by_retention;
        let more = !r.next_page_token.is_empty();
        if out == Output::Json {
            print_json(&keyed(
                &r.key_json,
                &r.key,
                json!({
                    "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
                    "more": more || take < r.entries.len(),
                    "truncated_by_retention": r.truncated_by_retention,
                    "served": r.served.as_ref().map(served_json),
                }),
            ));
        } else {
            let p = r
                .served
                .as_ref()
                .map(|s| s.partition.to_string())
                .unwrap_or_default();
            let by = served_by(r.served.as_ref());
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.version.to_string(),
                        format_time(e.time_ms),
                        p.clone(),
                        by.clone(),
                        flags_cell(e),
                        lineage_cell(e),
                        value_cell(e),
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
    if truncated {
        eprintln!("note: older versions of this key existed but are no longer kept (retention)");
    }
    Ok(())
}
