//! `tail`: follows a table's change feed (Query/Subscribe), printing
//! changes as they arrive. The last cursor received is kept so that, when
//! the stream breaks or the user presses Ctrl-C, the command prints how to
//! resume without loss or duplicates.

use serde_json::json;
use strata_proto::v1 as pb;

use crate::cli::{Output, TailArgs};
use crate::conn::Conn;
use crate::error::CliError;
use crate::output::{Columns, entry_json, flags_cell, keyed, print_json, value_cell};
use crate::point::format_time;
use crate::positions::cursor_json;

/// `strata tail TABLE [--from-time T | --after CURSOR] [--key K] [--partition N]`.
pub async fn tail(conn: &Conn, out: Output, a: TailArgs) -> Result<(), CliError> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let start = if let Some(c) = &a.after {
        Some(pb::subscribe_request::Start::After(c.clone()))
    } else {
        a.from_time.map(pb::subscribe_request::Start::FromTimeMs)
    };
    let req = pb::SubscribeRequest {
        table: a.table.clone(),
        start,
        keys: a.key.as_ref().map(|k| pb::KeyFilter {
            filter: Some(pb::key_filter::Filter::KeyJson(k.clone())),
        }),
        partition: a.partition,
        max_batch: 0,
        options: conn.options(),
    };
    let mut client = conn.query();
    let mut cursor: Option<pb::Cursor> = a.after.clone();
    let opened = tokio::select! {
        biased;
        _ = &mut ctrl_c => return Ok(()),
        r = client.subscribe(conn.stream_request(req)) => r,
    };
    let mut stream = opened.map_err(|s| conn.fail(s))?.into_inner();
    let mut cols = Columns::new(&["TIME", "PARTITION", "VERSION", "KEY", "FLAGS", "VALUE"]);
    let mut caught_up = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                say_resume(&a, cursor.as_ref());
                return Ok(());
            }
            m = stream.message() => m,
        };
        let m = match next {
            Ok(Some(m)) => m,
            Ok(None) => {
                say_resume(&a, cursor.as_ref());
                return Err(conn.fail(tonic::Status::unavailable(
                    "the server ended the change feed",
                )));
            }
            Err(status) => {
                say_resume(&a, cursor.as_ref());
                return Err(conn.fail(status));
            }
        };
        if m.resume.is_some() {
            cursor = m.resume.clone();
        }
        if out == Output::Json {
            print_json(&json!({
                "changes": m.changes.iter().map(|c| keyed(&c.key_json, &c.key, json!({
                    "partition": c.partition,
                    "entry": c.entry.as_ref().map(entry_json),
                }))).collect::<Vec<_>>(),
                "resume": m.resume.as_ref().map(cursor_json),
                "caught_up": m.caught_up,
            }));
        } else {
            let rows: Vec<Vec<String>> = m
                .changes
                .iter()
                .map(|c| {
                    let e = c.entry.clone().unwrap_or_default();
                    vec![
                        format_time(e.time_ms),
                        c.partition.to_string(),
                        e.version.to_string(),
                        crate::output::cell(&c.key_json, &c.key),
                        flags_cell(&e),
                        value_cell(&e),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                cols.print(&rows);
            }
            if m.caught_up && !caught_up {
                eprintln!("-- caught up; following new changes (Ctrl-C stops) --");
            }
        }
        caught_up |= m.caught_up;
    }
}

/// Prints on stderr where the feed stopped and the command that resumes it.
fn say_resume(a: &TailArgs, cursor: Option<&pb::Cursor>) {
    let Some(c) = cursor else {
        eprintln!("no position received yet: run the same command again to start over");
        return;
    };
    let cj = cursor_json(c).to_string();
    let mut cmd = format!(
        "strata tail {} --after {}",
        shell_quote(&a.table),
        shell_quote(&cj)
    );
    if let Some(k) = &a.key {
        cmd.push_str(&format!(" --key {}", shell_quote(k)));
    }
    if let Some(p) = a.partition {
        cmd.push_str(&format!(" --partition {p}"));
    }
    eprintln!("last cursor: {cj}");
    eprintln!("resume with: {cmd}");
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("sums"), "sums");
        assert_eq!(
            shell_quote(r#"[{"partition":0}]"#),
            r#"'[{"partition":0}]'"#
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
