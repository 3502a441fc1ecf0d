//! ListTables and DescribeTable: the tables' settings, and the state of
//! each partition as its owner reports it.

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_proto::v1 as pb;
use strata_state::{Granularity, Partition, Retention, Version};

use super::context::{QueryContext, blocking};
use super::error::QueryError;
use super::route::{Call, Route};
use strata_engine::TableMeta;
use strata_engine::directory::Owner;
use strata_engine::registry::PartitionState;

fn info(ctx: &QueryContext, t: &TableMeta) -> pb::TableInfo {
    let policy = match t.options.retention {
        Retention::Unlimited => pb::retention::Policy::Unlimited(pb::Unlimited {}),
        Retention::LastVersions(n) => pb::retention::Policy::LastVersions(n.get()),
        Retention::Duration(d) => pb::retention::Policy::DurationMs(d.as_millis() as u64),
    };
    let granularity = match t.options.granularity {
        Granularity::PerMutation => pb::Granularity::PerMutation,
        Granularity::PerCommit => pb::Granularity::PerCommit,
    };
    pb::TableInfo {
        name: t.name.clone(),
        partitions: ctx.partitions(),
        retention: Some(pb::Retention {
            policy: Some(policy),
        }),
        granularity: granularity as i32,
        // Keys are stored in their order-preserving encoding, values in
        // bincode; both render as JSON through the table's serde types.
        key_codec: "ordered".into(),
        value_codec: "bincode".into(),
        json: true,
        changelog_topic: t.changelog_topic.clone(),
        input_topics: vec![t.input_topic.clone()],
    }
}

/// ListTables: every table, in name order.
pub(crate) fn list(ctx: &QueryContext) -> pb::ListTablesResponse {
    let mut tables: Vec<pb::TableInfo> = ctx.app.tables.iter().map(|t| info(ctx, t)).collect();
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListTablesResponse { tables }
}

/// DescribeTable: settings and every partition's state, from this
/// instance for its own partitions, from their owners for the others (one
/// forwarded DescribeTable per owner, answered from its own partitions),
/// and from the owner directory when an owner does not answer.
pub(crate) async fn describe(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::DescribeTableRequest,
) -> Result<pb::DescribeTableResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    // Off the tokio workers: describing reads RocksDB (the oldest readable
    // version is found by bisection).
    let mut partitions = {
        let (c, m) = (ctx.clone(), meta.clone());
        blocking(move || Ok(describe_here(&c, &m))).await?
    };
    // A forwarded call answers for this instance's partitions only.
    let forwarded = call.hops > 0;
    let directory = &ctx.app.directory;
    let mut owners: BTreeMap<String, (Owner, Vec<usize>)> = BTreeMap::new();
    for (i, info) in partitions.iter_mut().enumerate() {
        if info.owner.is_some() {
            continue;
        }
        match directory.owner(Partition(info.partition)) {
            Some(o) if o.member != directory.member_id() => {
                info.owner = Some(pb::Instance {
                    id: o.member.clone(),
                    endpoint: o.endpoint.clone(),
                });
                info.state = Some(match &o.state {
                    PartitionState::Running => pb::partition_info::State::Running(pb::Running {}),
                    PartitionState::Restoring { records, rate } => {
                        pb::partition_info::State::Restoring(pb::Restoring {
                            records: *records,
                            rate: *rate,
                            remaining: None,
                        })
                    }
                });
                owners
                    .entry(o.member.clone())
                    .or_insert_with(|| (o, Vec::new()))
                    .1
                    .push(i);
            }
            _ => {
                info.state = Some(pb::partition_info::State::Unassigned(pb::Unassigned {}));
            }
        }
    }
    if forwarded || owners.is_empty() {
        return Ok(pb::DescribeTableResponse {
            table: Some(info(&ctx, meta)),
            partitions,
        });
    }
    // Ask each owner about its partitions, at once.
    let asks = owners.into_values().map(|(owner, idx)| {
        let p = Partition(partitions[idx[0]].partition);
        let sub = pb::DescribeTableRequest {
            table: req.table.clone(),
            options: Some(call.forwarded_options(req.options)),
        };
        let (ctx, call) = (&ctx, &call);
        async move {
            let r: Result<pb::DescribeTableResponse, QueryError> = match ctx.route(call, &sub.table, p) {
                Ok(Route::There(mut remote)) if remote.owner.member == owner.member => {
                    match call.request(sub) {
                        Ok(r) => remote
                            .query
                            .describe_table(r)
                            .await
                            .map(|r| r.into_inner())
                            .map_err(|status| QueryError::Forwarded {
                                member: owner.member.clone(),
                                endpoint: owner.endpoint.clone(),
                                status,
                            }),
                        Err(e) => Err(e),
                    }
                }
                Ok(_) => Err(QueryError::Unavailable(format!(
                    "the owner directory changed while asking {} about its partitions; describe again",
                    owner.member
                ))),
                Err(e) => Err(e),
            };
            (owner, idx, r)
        }
    });
    for (owner, idx, r) in futures_util::future::join_all(asks).await {
        match r {
            Ok(resp) => {
                for i in idx {
                    let p = partitions[i].partition;
                    match resp.partitions.iter().find(|x| {
                        x.partition == p && x.owner.as_ref().is_some_and(|o| o.id == owner.member)
                    }) {
                        Some(theirs) => partitions[i] = theirs.clone(),
                        None => {
                            // It no longer claims it: a handover.
                            partitions[i].state =
                                Some(pb::partition_info::State::Unassigned(pb::Unassigned {}));
                        }
                    }
                }
            }
            Err(e) => {
                for i in idx {
                    let p = Partition(partitions[i].partition);
                    let mut u = ctx.unavailable(p, &e);
                    u.owner = partitions[i].owner.clone();
                    partitions[i].state = Some(pb::partition_info::State::Unreachable(u));
                }
            }
        }
    }
    Ok(pb::DescribeTableResponse {
        table: Some(info(&ctx, meta)),
        partitions,
    })
}

/// Every partition as this instance knows it: its own ones described, the
/// others without owner or state.
fn describe_here(ctx: &QueryContext, meta: &TableMeta) -> Vec<pb::PartitionInfo> {
    let lag = ctx.app.registry.lag();
    let local: Vec<(Partition, PartitionState)> = ctx
        .app
        .registry
        .partitions()
        .into_iter()
        .filter(|(t, _, _)| *t == meta.name)
        .map(|(_, p, s)| (p, s))
        .collect();
    let mut partitions = Vec::with_capacity(ctx.partitions() as usize);
    for p in (0..ctx.partitions()).map(Partition) {
        let mut info = pb::PartitionInfo {
            partition: p.0,
            ..Default::default()
        };
        match local.iter().find(|(q, _)| *q == p).map(|(_, s)| s) {
            Some(PartitionState::Running) => {
                info.owner = Some(ctx.instance.clone());
                info.state = Some(pb::partition_info::State::Running(pb::Running {}));
                info.input_lag = lag
                    .get(&(meta.input_topic.clone(), p))
                    .copied()
                    .unwrap_or(0);
                if let Some(r) = ctx.app.registry.reader(&meta.name, p) {
                    info.latest_version = r.latest_version().0;
                    info.latest_time_ms = r.last_commit_time().0;
                    info.oldest_version = oldest_readable(&r).0;
                }
                info.replay = ctx
                    .app
                    .registry
                    .replay(p)
                    .map(|r| super::convert::replay_progress(&r));
            }
            Some(PartitionState::Restoring { records, rate }) => {
                info.owner = Some(ctx.instance.clone());
                info.state = Some(pb::partition_info::State::Restoring(pb::Restoring {
                    records: *records,
                    rate: *rate,
                    remaining: ctx.app.registry.restore_remaining(&meta.name, p),
                }));
            }
            None => {}
        }
        partitions.push(info);
    }
    partitions
}

/// The oldest version whose state the partition can still read as a whole
/// (per-key limits aside): found by bisecting over `resolve`, which applies
/// the partition-level retention checks.
pub(crate) fn oldest_readable<S: strata_state::store::KvStore>(
    r: &strata_state::PartitionReader<S>,
) -> Version {
    let latest = r.latest_version();
    if r.resolve(strata_state::At::Version(Version::ZERO)).is_ok() {
        return Version::ZERO;
    }
    // Invariant: `hi` readable (the latest always is), `lo` not.
    let (mut lo, mut hi) = (0u64, latest.0);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if r.resolve(strata_state::At::Version(Version(mid))).is_ok() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Version(hi)
}
