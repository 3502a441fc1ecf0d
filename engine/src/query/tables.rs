//! ListTables and DescribeTable: the tables' settings, and the state of
//! each partition as this instance knows it. Partitions owned elsewhere are
//! listed as unreachable from here until the owner directory and
//! forwarding say more.

use strata_proto::v1 as pb;
use strata_state::{Granularity, Partition, Retention, Version};

use super::context::QueryContext;
use super::error::QueryError;
use crate::registry::PartitionState;
use crate::runtime::TableMeta;

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

/// DescribeTable: settings and every partition's state.
pub(crate) fn describe(
    ctx: &QueryContext,
    req: &pb::DescribeTableRequest,
) -> Result<pb::DescribeTableResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
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
            }
            Some(PartitionState::Restoring { records, rate }) => {
                info.owner = Some(ctx.instance.clone());
                info.state = Some(pb::partition_info::State::Restoring(pb::Restoring {
                    records: *records,
                    rate: *rate,
                    remaining: None,
                }));
            }
            None => {
                let e = QueryError::NotLocal {
                    table: meta.name.clone(),
                    partition: p,
                };
                info.state = Some(pb::partition_info::State::Unreachable(
                    ctx.unavailable(p, &e),
                ));
            }
        }
        partitions.push(info);
    }
    Ok(pb::DescribeTableResponse {
        table: Some(info(ctx, meta)),
        partitions,
    })
}

/// The oldest version whose state the partition can still read as a whole
/// (per-key limits aside): found by bisecting over `resolve`, which applies
/// the partition-level retention checks.
fn oldest_readable<S: strata_state::store::KvStore>(
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
