//! One partition's part of a feed: served here from the partition's
//! reader, or relayed from its owner.

use std::sync::Arc;

use prost::Message;
use strata_proto::v1 as pb;
use strata_state::{At, HistoryQuery, Order, Point, Timestamp, Version};
use tokio::sync::mpsc;
use tonic::Status;

use crate::context::{QueryContext, blocking};
use crate::convert::{Render, Repr};
use crate::error::QueryError;
use crate::route::{Call, Local, Remote};

use super::feed::{Event, Spec, StartAt, Stop};

/// Serves a partition readable here until it moves or the client leaves.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_here(
    ctx: &Arc<QueryContext>,
    spec: &Arc<Spec>,
    local: Local,
    start: StartAt,
    pos: &mut Option<u64>,
    target: &mut Option<u64>,
    caught_up: &mut bool,
    events: &mpsc::Sender<Event>,
) -> Result<Stop, QueryError> {
    let p = local.partition;
    let reader = local.reader;
    let latest = reader.latest_version().0;
    // Finding a start reads RocksDB (a time seek, a retention bisection):
    // off the tokio workers.
    let from = match *pos {
        Some(v) => v,
        None => {
            let r = reader.clone();
            blocking(move || start_version(&r, start, latest)).await?
        }
    };
    if from > latest {
        return Err(QueryError::invalid(format!(
            "the cursor of partition {p} is at version {from}, past its latest committed version {latest}; \
             resume from a cursor this table gave, or subscribe from now"
        )));
    }
    let target = *target.get_or_insert(latest);
    *pos = Some(from);
    *caught_up |= from >= target;
    let report = Event::Batch {
        partition: p.0,
        changes: Vec::new(),
        pos: from,
        caught_up: *caught_up,
    };
    if events.send(report).await.is_err() {
        return Ok(Stop::Closed);
    }
    let mut at = from;
    loop {
        // The registry's reader, each round: a partition that moved away
        // or started restoring stops here at once.
        let Some(reader) = ctx.app.registry.reader(&spec.table, p) else {
            return Ok(Stop::Moved);
        };
        let latest = reader.latest_version().0;
        if latest < at {
            // The partition went back (its state was rebuilt to less):
            // the owner is not the one the cursor came from.
            return Ok(Stop::Moved);
        }
        if latest == at {
            if events.is_closed() {
                return Ok(Stop::Closed);
            }
            tokio::time::sleep(ctx.limits.subscribe_poll).await;
            continue;
        }
        let upto = latest.min(at + spec.max_batch as u64);
        let (changes, upto) = {
            let (spec, ctx2) = (spec.clone(), ctx.clone());
            blocking(move || read_changes(&ctx2, &spec, &reader, p, at, upto)).await?
        };
        at = upto;
        *pos = Some(at);
        *caught_up |= at >= target;
        let batch = Event::Batch {
            partition: p.0,
            changes,
            pos: at,
            caught_up: *caught_up,
        };
        if events.send(batch).await.is_err() {
            return Ok(Stop::Closed);
        }
    }
}

/// The version after which a feed that starts at `start` begins, in a
/// partition whose latest version is `latest`.
fn start_version(
    reader: &strata_state::PartitionReader<strata_state::store::RocksStore>,
    start: StartAt,
    latest: u64,
) -> Result<u64, QueryError> {
    Ok(match start {
        StartAt::Latest => latest,
        StartAt::Time(0) | StartAt::Oldest => oldest_kept(reader),
        StartAt::Time(t) => {
            // The last version before `t`: its successors were
            // committed at or after `t`.
            match reader.resolve(At::Time(Timestamp(t - 1))) {
                Ok(v) => v.0,
                Err(e @ strata_state::Error::BeyondRetention { .. }) => {
                    // Older than anything kept: fine only if nothing
                    // was pruned before `t`.
                    let oldest = oldest_kept(reader);
                    let ok = oldest == 0
                        || reader
                            .version_record(Version(oldest))?
                            .is_some_and(|r| r.time.0 >= t);
                    if !ok {
                        return Err(e.into());
                    }
                    oldest
                }
                Err(e) => return Err(e.into()),
            }
        }
        StartAt::After(v) => v,
    })
}

/// The changes of versions `after + 1 ..= upto` of partition `p` within
/// the feed's key filter, cut to fit one message; with the last version
/// they cover.
fn read_changes(
    ctx: &QueryContext,
    spec: &Spec,
    reader: &strata_state::PartitionReader<strata_state::store::RocksStore>,
    p: strata_state::Partition,
    after: u64,
    upto: u64,
) -> Result<(Vec<pb::Change>, u64), QueryError> {
    let meta = ctx.table(&spec.table)?;
    let render = Render {
        meta,
        repr: Repr::of(spec.options.as_ref()),
    };
    let mut out = Vec::new();
    let budget = ctx.reply_budget() / 2;
    let mut used = 0;
    for v in after + 1..=upto {
        let Some(rec) = reader.version_record(Version(v))? else {
            return Err(QueryError::State(strata_state::Error::BeyondRetention {
                location: Box::new(reader.location().clone()),
                key: None,
                point: Point::Version(Version(v)),
                retention: reader.retention().to_string(),
                oldest: format!("version {}", oldest_kept(reader) + 1),
            }));
        };
        if !spec.range.contains(&rec.key) {
            continue;
        }
        let q = HistoryQuery {
            from: Some(Point::Version(Version(v))),
            to: Some(Point::Version(Version(v))),
            order: Order::Ascending,
            limit: 1,
        };
        let Some(h) = reader.history(&rec.key, &q)?.entries.into_iter().next() else {
            return Err(QueryError::Internal(format!(
                "version {v} of partition {p} is in the version log but not in its key's history"
            )));
        };
        let change = pb::Change {
            partition: p.0,
            key: render.key(&rec.key),
            key_json: render.key_json(&rec.key),
            entry: Some(render.history_entry(h)),
        };
        used += change.encoded_len() + 8;
        out.push(change);
        if used > budget {
            // The rest comes in the next message: the cursor says where
            // this one stopped.
            return Ok((out, v));
        }
    }
    Ok((out, upto))
}

/// The oldest version after which every change is still in the version
/// log (0 when nothing was pruned).
fn oldest_kept<S: strata_state::store::KvStore>(r: &strata_state::PartitionReader<S>) -> u64 {
    crate::tables::oldest_readable(r).0
}

/// Relays one partition's feed from its owner until it moves or the
/// client leaves.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_there(
    call: &Call,
    spec: &Arc<Spec>,
    partition: u32,
    mut remote: Remote,
    start: StartAt,
    pos: &mut Option<u64>,
    caught_up: &mut bool,
    events: &mpsc::Sender<Event>,
) -> Result<Stop, QueryError> {
    let req = pb::SubscribeRequest {
        table: spec.table.clone(),
        start: Some(match (*pos, start) {
            (Some(v), _) | (None, StartAt::After(v)) => {
                pb::subscribe_request::Start::After(pb::Cursor {
                    positions: vec![pb::PartitionVersion {
                        partition,
                        version: v,
                    }],
                })
            }
            (None, StartAt::Latest) => pb::subscribe_request::Start::Now(pb::Latest {}),
            (None, StartAt::Time(t)) => pb::subscribe_request::Start::FromTimeMs(t),
            (None, StartAt::Oldest) => pb::subscribe_request::Start::After(pb::Cursor {
                positions: Vec::new(),
            }),
        }),
        keys: spec.keys.clone(),
        partition: Some(partition),
        max_batch: spec.max_batch as u32,
        options: Some(call.forwarded_options(spec.options)),
    };
    let (member, endpoint) = (remote.owner.member.clone(), remote.owner.endpoint.clone());
    let forwarded = |status: Status| QueryError::Forwarded {
        member: member.clone(),
        endpoint: endpoint.clone(),
        status,
    };
    let mut stream = match remote.query.subscribe(call.stream_request(req)).await {
        Ok(s) => s.into_inner(),
        Err(s) if retryable_feed(&s) => return Ok(Stop::Moved),
        Err(s) => return Err(forwarded(s)),
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = events.closed() => return Ok(Stop::Closed),
        };
        match msg {
            Ok(Some(m)) => {
                let Some(v) = m
                    .resume
                    .as_ref()
                    .and_then(|c| c.positions.iter().find(|pv| pv.partition == partition))
                    .map(|pv| pv.version)
                else {
                    continue;
                };
                *pos = Some(v);
                *caught_up |= m.caught_up;
                let batch = Event::Batch {
                    partition,
                    changes: m.changes,
                    pos: v,
                    caught_up: *caught_up,
                };
                if events.send(batch).await.is_err() {
                    return Ok(Stop::Closed);
                }
            }
            Ok(None) => return Ok(Stop::Moved),
            Err(s) if retryable_feed(&s) => return Ok(Stop::Moved),
            Err(s) => return Err(forwarded(s)),
        }
    }
}

/// Whether a feed's failure on an owner means "route again": the owner
/// gave the partition up or stopped, or the connection broke. The
/// contract's own answers (unknown table, bad cursor, beyond retention,
/// credentials) end the feed.
fn retryable_feed(s: &Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}
