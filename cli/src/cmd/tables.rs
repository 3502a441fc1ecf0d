//! `tables` and `describe`: what a server serves, and the state of each
//! partition of a table.

use serde_json::{Value, json};
use strata_proto::v1 as pb;

use crate::cli::Output;
use crate::conn::Conn;
use crate::error::{CliError, code_name};
use crate::output::{Columns, print_json};
use crate::point::format_time;

fn retention(r: Option<&pb::Retention>) -> (String, Value) {
    match r.and_then(|r| r.policy.as_ref()) {
        Some(pb::retention::Policy::Unlimited(_)) | None => {
            ("unlimited".into(), json!({"unlimited": true}))
        }
        Some(pb::retention::Policy::LastVersions(n)) => {
            (format!("last {n} versions"), json!({"last_versions": n}))
        }
        Some(pb::retention::Policy::DurationMs(ms)) => {
            (format!("{ms} ms"), json!({"duration_ms": ms}))
        }
    }
}

fn granularity(g: i32) -> &'static str {
    match pb::Granularity::try_from(g) {
        Ok(pb::Granularity::PerMutation) => "per-mutation",
        Ok(pb::Granularity::PerCommit) => "per-commit",
        _ => "unspecified",
    }
}

fn table_json(t: &pb::TableInfo) -> Value {
    json!({
        "name": t.name,
        "partitions": t.partitions,
        "retention": retention(t.retention.as_ref()).1,
        "granularity": granularity(t.granularity),
        "key_codec": t.key_codec,
        "value_codec": t.value_codec,
        "json": t.json,
        "changelog_topic": t.changelog_topic,
        "input_topics": t.input_topics,
    })
}

/// `strata tables`.
pub async fn tables(conn: &Conn, out: Output) -> Result<(), CliError> {
    let r = conn
        .query()
        .list_tables(conn.request(pb::ListTablesRequest {}))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    if out == Output::Json {
        print_json(&json!({"tables": r.tables.iter().map(table_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    let mut c = Columns::new(&[
        "TABLE",
        "PARTITIONS",
        "RETENTION",
        "GRANULARITY",
        "CODECS",
        "CHANGELOG",
        "INPUTS",
    ]);
    let rows: Vec<Vec<String>> = r
        .tables
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.partitions.to_string(),
                retention(t.retention.as_ref()).0,
                granularity(t.granularity).into(),
                format!("{}/{}", t.key_codec, t.value_codec),
                t.changelog_topic.clone(),
                t.input_topics.join(","),
            ]
        })
        .collect();
    c.print(&rows);
    Ok(())
}

fn state(p: &pb::PartitionInfo) -> (String, Value) {
    use pb::partition_info::State;
    match &p.state {
        Some(State::Running(_)) => ("running".into(), json!({"running": {}})),
        Some(State::Restoring(r)) => {
            let remaining = r
                .remaining
                .map(|n| format!(", {n} to go"))
                .unwrap_or_default();
            (
                format!(
                    "restoring ({} records at {:.0}/s{remaining})",
                    r.records, r.rate
                ),
                json!({"restoring": {"records": r.records, "rate": r.rate, "remaining": r.remaining}}),
            )
        }
        Some(State::Unassigned(_)) => ("unassigned".into(), json!({"unassigned": {}})),
        Some(State::Unreachable(u)) => (
            format!("unreachable: {}", u.message),
            json!({"unreachable": {"code": code_name(tonic::Code::from_i32(u.code)), "message": u.message}}),
        ),
        None => ("unknown".into(), json!({})),
    }
}

/// The partition's last replay, as a cell and as JSON.
fn replay(p: &pb::PartitionInfo) -> (String, Value) {
    let Some(r) = &p.replay else {
        return ("-".into(), Value::Null);
    };
    let state = match pb::ReplayState::try_from(r.state) {
        Ok(pb::ReplayState::Planned) => "planned",
        Ok(pb::ReplayState::Running) => "running",
        Ok(pb::ReplayState::Done) => "done",
        Ok(pb::ReplayState::Cancelled) => "cancelled",
        _ => "unknown",
    };
    let cell = match state {
        "running" => format!(
            "running: {} replayed, {} to go ({:.0}/s)",
            r.records, r.remaining, r.rate
        ),
        _ => format!("{state}: {} replayed", r.records),
    };
    (
        cell,
        json!({
            "table": r.table,
            "state": state,
            "cut_time": format_time(r.cut_time_ms),
            "records": r.records,
            "remaining": r.remaining,
            "rate": r.rate,
        }),
    )
}

/// `strata describe TABLE`.
pub async fn describe(conn: &Conn, out: Output, table: String) -> Result<(), CliError> {
    let r = conn
        .query()
        .describe_table(conn.request(pb::DescribeTableRequest {
            table,
            options: conn.options(),
        }))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    let info = r.table.unwrap_or_default();
    if out == Output::Json {
        let parts: Vec<Value> = r
            .partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "owner": p.owner.as_ref().map(|o| json!({"id": o.id, "endpoint": o.endpoint})),
                    "generation": p.generation,
                    "state": state(p).1,
                    "latest_version": p.latest_version,
                    "latest_time": format_time(p.latest_time_ms),
                    "latest_time_ms": p.latest_time_ms,
                    "oldest_version": p.oldest_version,
                    "input_lag": p.input_lag,
                    "replay": replay(p).1,
                })
            })
            .collect();
        print_json(&json!({"table": table_json(&info), "partitions": parts}));
        return Ok(());
    }
    println!("table:       {}", info.name);
    println!("partitions:  {}", info.partitions);
    println!("retention:   {}", retention(info.retention.as_ref()).0);
    println!("granularity: {}", granularity(info.granularity));
    println!(
        "codecs:      key {}, value {} (json: {})",
        info.key_codec, info.value_codec, info.json
    );
    println!("changelog:   {}", info.changelog_topic);
    println!("inputs:      {}", info.input_topics.join(", "));
    println!();
    let mut c = Columns::new(&[
        "PARTITION",
        "LATEST",
        "LATEST_TIME",
        "OLDEST",
        "INPUT_LAG",
        "OWNER",
        "STATE",
        "REPLAY",
    ]);
    let rows: Vec<Vec<String>> = r
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.latest_version.to_string(),
                if p.latest_time_ms == 0 {
                    "-".into()
                } else {
                    format_time(p.latest_time_ms)
                },
                p.oldest_version.to_string(),
                p.input_lag.to_string(),
                p.owner
                    .as_ref()
                    .map(|o| format!("{} ({})", o.id, o.endpoint))
                    .unwrap_or_else(|| "-".into()),
                state(p).0,
                replay(p).0,
            ]
        })
        .collect();
    c.print(&rows);
    Ok(())
}
