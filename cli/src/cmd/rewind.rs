//! `rewind`: Admin/Rewind with a plan first. `--dry-run` only plans.
//! Without `--yes`, an interactive terminal is shown the plan and asked;
//! the rewind it then applies carries the plan's latest versions as
//! expectations, so what is applied is what was reviewed (the server
//! refuses with FAILED_PRECONDITION if a partition moved on). Without a
//! terminal, `--yes` is required.
//!
//! `--replay` makes it a rewind and replay (whole partitions): the output
//! adds the seek offsets, where the replay ends, and the rewinds of the
//! task's other tables. `--cancel` cancels running replays
//! (Admin/CancelReplay) and shows where each stopped.

use std::io::IsTerminal;

use serde_json::{Value, json};
use strata_proto::v1 as pb;

use super::{at, key_filter};
use crate::cli::{Output, RewindArgs};
use crate::conn::Conn;
use crate::error::{CliError, code_name};
use crate::output::{Columns, cell, entry_json, keyed, print_json, value_cell};
use crate::point::{Point, format_time};
use crate::positions::format_partition_versions;

/// `strata rewind TABLE (--to-version N | --to-time T) [...] [--dry-run] [--yes]`.
pub async fn rewind(conn: &Conn, out: Output, a: RewindArgs) -> Result<(), CliError> {
    if a.cancel {
        return cancel(conn, out, &a).await;
    }
    let to = match (a.to_version, a.to_time) {
        (Some(v), _) => Point::Version(v),
        (None, Some(t)) => Point::TimeMs(t),
        (None, None) => return Err(CliError::Usage("give --to-version or --to-time".into())),
    };
    let keys = match &a.key {
        Some(k) => Some(pb::KeyFilter {
            filter: Some(pb::key_filter::Filter::KeyJson(k.clone())),
        }),
        None => key_filter(&a.keys),
    };
    let request = |dry_run: bool, expect_latest: Vec<pb::PartitionVersion>| pb::RewindRequest {
        table: a.table.clone(),
        partition: a.partition,
        keys: keys.clone(),
        to: Some(at(to)),
        dry_run,
        expect_latest,
        replay: a.replay,
        max_listed_changes: a.max_listed,
        options: conn.options(),
    };
    let call = |req: pb::RewindRequest| async move {
        conn.admin()
            .rewind(conn.request(req))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| conn.fail(s))
    };
    let mut expect = a.expect_latest.clone();

    if a.dry_run {
        let plan = call(request(true, expect)).await?;
        show(out, &plan);
        let pvs = planned_versions(&plan);
        if out == Output::Table && !pvs.is_empty() {
            eprintln!(
                "dry run: nothing was changed. To apply exactly this plan, run the same command \
                 with --yes --expect-latest {} instead of --dry-run",
                format_partition_versions(&pvs)
            );
        }
        return failures(&plan);
    }

    if !a.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(
                "rewind changes the table: pass --yes to apply it, or --dry-run to see what \
                 would change (stdin is not a terminal, so no confirmation can be asked)"
                    .into(),
            ));
        }
        let plan = call(request(true, expect.clone())).await?;
        show(out, &plan);
        failures(&plan)?;
        if !a.replay && plan.partitions.iter().all(|p| p.change_count == 0) {
            eprintln!("nothing to rewind: the keys are already in the target state");
            return Ok(());
        }
        if !confirm("apply this rewind? [y/N] ").await {
            return Err(CliError::Other(
                "rewind aborted; nothing was changed".into(),
            ));
        }
        if expect.is_empty() {
            expect = planned_versions(&plan);
        }
    }
    let done = call(request(false, expect)).await?;
    show(out, &done);
    failures(&done)
}

/// The latest version of each partition a plan concerns, as expectations.
fn planned_versions(plan: &pb::RewindResponse) -> Vec<pb::PartitionVersion> {
    plan.partitions
        .iter()
        .filter(|p| p.status != pb::RewindStatus::Failed as i32)
        .map(|p| pb::PartitionVersion {
            partition: p.partition,
            version: p.from_version,
        })
        .collect()
}

/// Asks on the terminal; true for `y` or `yes`.
async fn confirm(prompt: &'static str) -> bool {
    tokio::task::spawn_blocking(move || {
        eprint!("{prompt}");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).is_ok()
            && matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    })
    .await
    .unwrap_or(false)
}

/// Says which partitions failed; they make the exit code "incomplete".
fn failures(r: &pb::RewindResponse) -> Result<(), CliError> {
    let failed: Vec<&pb::PartitionRewind> = r
        .partitions
        .iter()
        .filter(|p| p.status == pb::RewindStatus::Failed as i32)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    for p in &failed {
        let e = p.error.clone().unwrap_or_default();
        eprintln!(
            "warning: partition {} was not rewound: {}: {}",
            p.partition,
            code_name(tonic::Code::from_i32(e.code)),
            e.message
        );
    }
    let list: Vec<String> = failed.iter().map(|p| p.partition.to_string()).collect();
    Err(CliError::Incomplete(format!(
        "the rewind failed in partition(s) {}; the others were {}",
        list.join(", "),
        if r.dry_run {
            "planned"
        } else {
            "applied (undo them by rewinding to their from version)"
        }
    )))
}

/// `strata rewind TABLE --cancel [--partition N]`.
async fn cancel(conn: &Conn, out: Output, a: &RewindArgs) -> Result<(), CliError> {
    let r = conn
        .admin()
        .cancel_replay(conn.request(pb::CancelReplayRequest {
            table: a.table.clone(),
            partition: a.partition,
            options: conn.options(),
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| conn.fail(s))?;
    if out == Output::Json {
        let parts: Vec<Value> = r
            .partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "replay": p.replay.as_ref().map(replay_json),
                    "error": p.error.as_ref().map(crate::output::unavailable_json),
                })
            })
            .collect();
        print_json(&json!({ "partitions": parts }));
    } else {
        let rows: Vec<Vec<String>> = r
            .partitions
            .iter()
            .map(|p| match &p.replay {
                Some(rp) => vec![
                    p.partition.to_string(),
                    replay_state_name(rp.state).into(),
                    rp.records.to_string(),
                    offsets(&rp.position),
                ],
                None => vec![
                    p.partition.to_string(),
                    if p.error.is_some() {
                        "failed"
                    } else {
                        "not replaying"
                    }
                    .into(),
                    "-".into(),
                    "-".into(),
                ],
            })
            .collect();
        Columns::new(&["PARTITION", "REPLAY", "REPLAYED", "POSITION"]).print(&rows);
    }
    let failed: Vec<String> = r
        .partitions
        .iter()
        .filter(|p| p.error.is_some())
        .map(|p| p.partition.to_string())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(CliError::Incomplete(format!(
        "the cancel did not reach partition(s) {}",
        failed.join(", ")
    )))
}

fn replay_state_name(s: i32) -> &'static str {
    match pb::ReplayState::try_from(s) {
        Ok(pb::ReplayState::Planned) => "planned",
        Ok(pb::ReplayState::Running) => "running",
        Ok(pb::ReplayState::Done) => "done",
        Ok(pb::ReplayState::Cancelled) => "cancelled",
        _ => "unspecified",
    }
}

/// `topic@offset,...`.
fn offsets(v: &[pb::TopicOffset]) -> String {
    v.iter()
        .map(|t| format!("{}@{}", t.topic, t.offset))
        .collect::<Vec<_>>()
        .join(",")
}

fn replay_json(r: &pb::ReplayProgress) -> Value {
    let offsets = |v: &[pb::TopicOffset]| -> Vec<Value> {
        v.iter()
            .map(|t| json!({"topic": t.topic, "offset": t.offset}))
            .collect()
    };
    json!({
        "state": replay_state_name(r.state),
        "cut_time": format_time(r.cut_time_ms),
        "cut_time_ms": r.cut_time_ms,
        "seek": offsets(&r.seek),
        "until": offsets(&r.until),
        "position": offsets(&r.position),
        "records": r.records,
        "remaining": r.remaining,
    })
}

fn status_name(s: i32) -> &'static str {
    match pb::RewindStatus::try_from(s) {
        Ok(pb::RewindStatus::Planned) => "planned",
        Ok(pb::RewindStatus::Applied) => "applied",
        Ok(pb::RewindStatus::Unchanged) => "unchanged",
        Ok(pb::RewindStatus::Failed) => "failed",
        _ => "unspecified",
    }
}

fn show(out: Output, r: &pb::RewindResponse) {
    if out == Output::Json {
        let parts: Vec<Value> = r
            .partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "status": status_name(p.status),
                    "target_version": p.target_version,
                    "from_version": p.from_version,
                    "new_versions": p.new_versions.map(|v| json!({"first": v.first, "last": v.last})),
                    "commit_time": (p.commit_time_ms > 0).then(|| format_time(p.commit_time_ms)),
                    "commit_time_ms": p.commit_time_ms,
                    "change_count": p.change_count,
                    "changes": p.changes.iter().map(|c| keyed(&c.key_json, &c.key, json!({
                        "current": c.current.as_ref().map(entry_json),
                        "restored": c.restored.as_ref().map(entry_json),
                    }))).collect::<Vec<_>>(),
                    "changes_truncated": p.changes_truncated,
                    "error": p.error.as_ref().map(crate::output::unavailable_json),
                    "replay": p.replay.as_ref().map(replay_json),
                    "other_tables": p.other_tables.iter().map(|t| json!({
                        "table": t.table,
                        "target_version": t.target_version,
                        "from_version": t.from_version,
                        "new_versions": t.new_versions.map(|v| json!({"first": v.first, "last": v.last})),
                        "change_count": t.change_count,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!({"dry_run": r.dry_run, "partitions": parts}));
        return;
    }
    let rows: Vec<Vec<String>> = r
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                status_name(p.status).into(),
                p.target_version.to_string(),
                p.from_version.to_string(),
                p.new_versions
                    .map(|v| {
                        if v.first == v.last {
                            v.first.to_string()
                        } else {
                            format!("{}..{}", v.first, v.last)
                        }
                    })
                    .unwrap_or_else(|| "-".into()),
                p.change_count.to_string(),
            ]
        })
        .collect();
    Columns::new(&[
        "PARTITION",
        "STATUS",
        "TARGET",
        "FROM",
        "NEW_VERSIONS",
        "CHANGES",
    ])
    .print(&rows);
    let changes: Vec<Vec<String>> = r
        .partitions
        .iter()
        .flat_map(|p| {
            p.changes.iter().map(move |c| {
                vec![
                    p.partition.to_string(),
                    cell(&c.key_json, &c.key),
                    c.current
                        .as_ref()
                        .map(value_cell)
                        .unwrap_or_else(|| "(absent)".into()),
                    c.restored
                        .as_ref()
                        .map(value_cell)
                        .unwrap_or_else(|| "(deleted)".into()),
                ]
            })
        })
        .collect();
    let replays: Vec<Vec<String>> = r
        .partitions
        .iter()
        .filter_map(|p| {
            p.replay.as_ref().map(|rp| {
                vec![
                    p.partition.to_string(),
                    replay_state_name(rp.state).into(),
                    format_time(rp.cut_time_ms),
                    offsets(&rp.seek),
                    offsets(&rp.until),
                    p.other_tables
                        .iter()
                        .map(|t| format!("{}:{}", t.table, t.change_count))
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
        })
        .collect();
    if !replays.is_empty() {
        println!();
        Columns::new(&[
            "PARTITION",
            "REPLAY",
            "CUT",
            "SEEK",
            "UNTIL",
            "OTHER_TABLES",
        ])
        .print(&replays);
    }
    if !changes.is_empty() {
        println!();
        Columns::new(&["PARTITION", "KEY", "CURRENT", "RESTORED"]).print(&changes);
    }
    for p in r.partitions.iter().filter(|p| p.changes_truncated) {
        println!(
            "(partition {}: {} more changes not listed; raise --max-listed to see them)",
            p.partition,
            p.change_count.saturating_sub(p.changes.len() as u64)
        );
    }
}
