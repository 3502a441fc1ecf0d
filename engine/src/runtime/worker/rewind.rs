//! Rewinds on the partition's own worker: checked against the version
//! the caller reviewed, planned or applied, and committed at once.

use std::collections::BTreeMap;
use std::time::Instant;

use strata_state::store::RocksStore;
use strata_state::{At, KeyRange, Location, Partition, RewindPlan, TablePartition, Timestamp};

use super::commit::{Io, commit_task};
use super::env::{Owned, WorkerEnv};
use crate::{Error, Result};

/// Fails unless table partition `t`'s latest version is `expect` (when
/// given): a rewind or replay applies only what was reviewed.
pub(super) fn check_latest(
    t: &TablePartition<RocksStore>,
    p: Partition,
    expect: Option<strata_state::Version>,
    what: &str,
) -> Result<()> {
    let Some(want) = expect else {
        return Ok(());
    };
    let latest = t.latest_version();
    if latest == want {
        return Ok(());
    }
    Err(strata_state::Error::Protocol {
        location: Box::new(Location {
            table: t.config().name.clone(),
            partition: p,
        }),
        reason: format!(
            "its latest version is {latest}, not the expected {want}: it changed since the {what} was reviewed; \
             plan again (dry run) and expect the new latest version"
        ),
    }
    .into())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rewind(
    env: &WorkerEnv,
    tasks: &mut BTreeMap<u32, Owned>,
    table: usize,
    p: Partition,
    at: At,
    range: KeyRange,
    dry_run: bool,
    expect: Option<strata_state::Version>,
) -> Result<RewindPlan> {
    let o = tasks
        .get_mut(&p.0)
        .ok_or_else(|| Error::Stopped(format!("partition {p} is not owned by this instance")))?;
    commit_task(env, o)?;
    let t = o
        .task
        .tables
        .tables
        .get_mut(table)
        .ok_or_else(|| Error::Topology(format!("no table #{table}")))?;
    // Checked after the commit above, on the thread that owns the
    // partition: nothing can commit between this check and the rewind.
    check_latest(t, p, expect, "rewind")?;
    if dry_run {
        return Ok(t.plan_rewind(at, &range)?);
    }
    let emit = env
        .emitters
        .get(table)
        .ok_or_else(|| Error::Topology(format!("no table #{table}")))?;
    let plan = o.task.rewind(table, emit, at, &range)?;
    let started = Instant::now();
    let mut io = Io {
        writers: &mut o.writers,
        env,
        sync: false,
        txn: o.txn.as_mut(),
    };
    o.task.commit(&mut io, Timestamp::now())?;
    env.registry.set_stats(
        p,
        o.task.stats.clone(),
        Some(started.elapsed().as_micros() as u64),
    );
    tracing::info!(partition = %p, table, target = plan.target.0, changes = plan.changes.len(), "rewound");
    Ok(plan)
}
