//! Admin.Rewind and Admin.CancelReplay: bring partitions back to an
//! earlier state, optionally replaying their inputs from there. Each
//! partition concerned is rewound by its owner (here, or the request is
//! forwarded to it with `partition` set), through the worker that owns it (the same path as
//! `RunningApp::rewind`), so a rewind is staged and committed between two
//! batches of processing, as new versions flagged `rewind`.
//!
//! The worker commits pending work first, then checks `expect_latest` and
//! plans (dry run) or applies; the check and the rewind happen on the
//! partition's own thread, so nothing commits in between.
//!
//! With `replay`, each owner's worker rewinds every table of the task to
//! the target's commit time and seeks the inputs back
//! (`runtime/worker/replay.rs`); the reply reports the chosen table's
//! rewind, the other tables' rewinds and the seek offsets. CancelReplay is
//! routed the same way.

use std::sync::Arc;

use prost::Message;
use strata_proto::v1 as pb;
use strata_state::{Partition, Version};

use super::context::{QueryContext, blocking};
use super::convert::{self, Render, Repr};
use super::error::QueryError;
use super::route::{Call, routed};
use super::scan::{check_single, targets};
use crate::forward::forward;

/// Rewind: plans or applies a rewind in every partition concerned.
pub(crate) async fn rewind(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::RewindRequest,
) -> Result<pb::RewindResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    if req.replay && req.keys.as_ref().is_some_and(|k| k.filter.is_some()) {
        return Err(QueryError::invalid(
            "a replay reprocesses the whole input of each partition, so it rewinds whole partitions: drop `keys` \
             (or rewind the keys without replay)",
        ));
    }
    let at = match req.to.and_then(|a| a.point) {
        None | Some(pb::at::Point::Latest(_)) => {
            return Err(QueryError::invalid(
                "a rewind needs `to`: an earlier version or time (not latest)",
            ));
        }
        Some(p) => convert::at(Some(pb::At { point: Some(p) })),
    };
    let (range, single) = convert::key_filter(meta, req.keys.clone())?;
    let targets = targets(&ctx, meta, req.partition, single.as_deref())?;
    check_single(at, &targets, "a rewind")?;
    for e in &req.expect_latest {
        ctx.check_partition(e.partition)?;
    }
    let listed = if req.max_listed_changes == 0 {
        ctx.limits.default_rewind_listed
    } else {
        req.max_listed_changes.min(ctx.limits.max_rewind_listed)
    } as usize;
    let render = Render {
        meta,
        repr: Repr::of(req.options.as_ref()),
    };

    let one = |p: Partition| {
        let expect = req
            .expect_latest
            .iter()
            .find(|e| e.partition == p.0)
            .map(|e| Version(e.version));
        let sub = pb::RewindRequest {
            partition: Some(p.0),
            expect_latest: req
                .expect_latest
                .iter()
                .filter(|e| e.partition == p.0)
                .cloned()
                .collect(),
            ..req.clone()
        };
        let (ctx, call, range, render) = (&ctx, &call, range.clone(), render.clone());
        let (table, dry_run, replay) = (sub.table.clone(), sub.dry_run, sub.replay);
        async move {
            routed(
                ctx,
                call,
                &sub.table,
                p,
                |_local| async move {
                    let app = ctx.app.clone();
                    if replay {
                        let name = table.clone();
                        let outcome =
                            blocking(move || Ok(app.replay(&name, p, at, dry_run, expect)?))
                                .await?;
                        return Ok(replay_result(ctx, &render, p, outcome, dry_run, listed));
                    }
                    let plan =
                        blocking(move || Ok(app.rewind(&table, p, at, range, dry_run, expect)?))
                            .await?;
                    Ok(result(ctx, &render, p, plan, dry_run, listed))
                },
                |remote| {
                    let reply = forward(call, &sub, p)(remote);
                    async move { owner_entry(reply.await?.partitions, p, "rewind", |r| r.partition) }
                },
            )
            .await
        }
    };
    let outcomes = futures_util::future::join_all(targets.iter().map(|&p| one(p))).await;
    // Listed changes share the reply budget; counts stay complete.
    let mut budget = ctx.reply_budget();
    let mut partitions = Vec::with_capacity(targets.len());
    for (p, outcome) in targets.into_iter().zip(outcomes) {
        match outcome {
            Ok(mut r) => {
                let mut kept = Vec::new();
                for c in std::mem::take(&mut r.changes) {
                    let size = c.encoded_len() + 8;
                    if size > budget {
                        break;
                    }
                    budget -= size;
                    kept.push(c);
                }
                r.changes_truncated = (kept.len() as u64) < r.change_count;
                r.changes = kept;
                partitions.push(r);
            }
            // One partition asked for: its failure is the call's.
            Err(e) if req.partition.is_some() || single.is_some() => return Err(e),
            Err(e) => partitions.push(pb::PartitionRewind {
                partition: p.0,
                status: pb::RewindStatus::Failed as i32,
                error: Some(ctx.unavailable(p, &e)),
                ..Default::default()
            }),
        }
    }
    Ok(pb::RewindResponse {
        dry_run: req.dry_run,
        partitions,
    })
}

/// A replay's outcome in one partition: the chosen table's rewind as for
/// a plain rewind (but PLANNED or APPLIED even when no key changes: the
/// replay itself was planned or started), the other tables' rewinds and
/// the replay's positions.
fn replay_result(
    ctx: &QueryContext,
    render: &Render<'_>,
    p: Partition,
    outcome: strata_engine::replay::ReplayOutcome,
    dry_run: bool,
    listed: usize,
) -> pb::PartitionRewind {
    let chosen = &render.meta.name;
    let plan = outcome
        .rewind_of(chosen)
        .cloned()
        .unwrap_or(strata_state::RewindPlan {
            target: Version::ZERO,
            from: Version::ZERO,
            changes: Vec::new(),
        });
    let mut out = result(ctx, render, p, plan, dry_run, listed);
    out.status = if dry_run {
        pb::RewindStatus::Planned
    } else {
        pb::RewindStatus::Applied
    } as i32;
    out.replay = Some(convert::replay_progress(&outcome.progress));
    for (table, plan) in outcome.rewinds.iter().filter(|(t, _)| t != chosen) {
        let count = plan.changes.len() as u64;
        out.other_tables.push(pb::TableRewind {
            table: table.clone(),
            target_version: plan.target.0,
            from_version: plan.from.0,
            new_versions: (!dry_run && count > 0).then(|| pb::VersionRange {
                first: plan.from.0 + 1,
                last: plan.from.0 + count,
            }),
            change_count: count,
        });
    }
    out
}

/// CancelReplay: cancels the running replay of every partition concerned.
pub(crate) async fn cancel_replay(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::CancelReplayRequest,
) -> Result<pb::CancelReplayResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    let targets = targets(&ctx, meta, req.partition, None)?;
    let one = |p: Partition| {
        let sub = pb::CancelReplayRequest {
            partition: Some(p.0),
            ..req.clone()
        };
        let (ctx, call) = (&ctx, &call);
        async move {
            routed(
                ctx,
                call,
                &sub.table,
                p,
                |_local| async move {
                    let app = ctx.app.clone();
                    let r = blocking(move || Ok(app.cancel_replay(p)?)).await?;
                    Ok(pb::PartitionReplay {
                        partition: p.0,
                        replay: r.as_ref().map(convert::replay_progress),
                        error: None,
                    })
                },
                |remote| {
                    let reply = forward(call, &sub, p)(remote);
                    async move { owner_entry(reply.await?.partitions, p, "cancel", |r| r.partition) }
                },
            )
            .await
        }
    };
    let outcomes = futures_util::future::join_all(targets.iter().map(|&p| one(p))).await;
    let mut partitions = Vec::with_capacity(targets.len());
    for (p, outcome) in targets.into_iter().zip(outcomes) {
        match outcome {
            Ok(r) if r.replay.is_none() && req.partition.is_some() => {
                return Err(strata_engine::Error::Precondition(format!(
                    "partition {p} of table {:?} is not replaying: nothing to cancel",
                    req.table
                ))
                .into());
            }
            Ok(r) => partitions.push(r),
            Err(e) if req.partition.is_some() => return Err(e),
            Err(e) => partitions.push(pb::PartitionReplay {
                partition: p.0,
                replay: None,
                error: Some(ctx.unavailable(p, &e)),
            }),
        }
    }
    Ok(pb::CancelReplayResponse { partitions })
}

/// Partition `p`'s entry in the reply of its owner, to which a `what`
/// ("rewind", "cancel") of `p` alone was forwarded.
fn owner_entry<T>(
    entries: Vec<T>,
    p: Partition,
    what: &str,
    partition: impl Fn(&T) -> u32,
) -> Result<T, tonic::Status> {
    entries
        .into_iter()
        .find(|e| partition(e) == p.0)
        .ok_or_else(|| {
            tonic::Status::internal(format!("the owner's {what} reply has no partition {p}"))
        })
}

fn result(
    ctx: &QueryContext,
    render: &Render<'_>,
    p: Partition,
    plan: strata_state::RewindPlan,
    dry_run: bool,
    listed: usize,
) -> pb::PartitionRewind {
    let count = plan.changes.len();
    let status = match (count, dry_run) {
        (0, _) => pb::RewindStatus::Unchanged,
        (_, true) => pb::RewindStatus::Planned,
        (_, false) => pb::RewindStatus::Applied,
    };
    let mut out = pb::PartitionRewind {
        partition: p.0,
        status: status as i32,
        target_version: plan.target.0,
        from_version: plan.from.0,
        change_count: count as u64,
        changes_truncated: count > listed,
        ..Default::default()
    };
    if status == pb::RewindStatus::Applied {
        // The rewind was committed on its own right after the plan, and
        // versions have no gaps: it holds the next `count` versions.
        let first = plan.from.0 + 1;
        let last = plan.from.0 + count as u64;
        out.new_versions = Some(pb::VersionRange { first, last });
        if let Ok(r) = ctx.reader(&render.meta.name, p)
            && let Ok(Some(rec)) = r.version_record(Version(first))
        {
            out.commit_time_ms = rec.time.0;
        }
    }
    for d in plan.changes.into_iter().take(listed) {
        let change = pb::RewindChange {
            key: render.key(&d.key),
            key_json: render.key_json(&d.key),
            current: d.after.map(|v| render.entry(v)),
            restored: d.before.map(|v| render.entry(v)),
        };
        out.changes.push(change);
    }
    out.changes_truncated = out.changes.len() < count;
    out
}
