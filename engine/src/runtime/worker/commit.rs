//! The commit adapter: what a task's commit needs of Kafka (its changelog
//! writers, outputs, offsets, and under exactly-once its transaction), and
//! the worker's commits of one task, all tasks, and a task being released.

use std::time::Instant;

use strata_kafka::changelog::KafkaChangelogWriter;
use strata_kafka::transactions::TaskTxn;
use strata_state::Timestamp;

use super::env::{Owned, Worker, WorkerEnv};
use crate::Result;
use crate::context::OutRecord;
use crate::task::CommitIo;

pub(super) struct Io<'a> {
    pub(super) writers: &'a mut [KafkaChangelogWriter],
    pub(super) env: &'a WorkerEnv,
    /// Commit offsets synchronously (the task is being released).
    pub(super) sync: bool,
    pub(super) txn: Option<&'a mut TaskTxn>,
}

impl CommitIo for Io<'_> {
    fn changelog(&mut self, table: usize) -> &mut dyn strata_state::ChangelogWriter {
        &mut self.writers[table]
    }
    fn produce(&mut self, records: &[OutRecord]) -> Result<()> {
        Ok(match &self.txn {
            None => self.env.outputs.produce(records),
            Some(t) => t.produce(&self.env.outputs, records),
        }?)
    }
    fn commit_offsets(&mut self, positions: &[strata_state::InputOffset]) -> Result<()> {
        Ok(match self.txn.as_deref_mut() {
            None => self.env.group.commit_positions(positions, self.sync),
            Some(t) => t.commit(&self.env.group, positions),
        }?)
    }
    fn begin(&mut self) -> Result<()> {
        match self.txn.as_deref_mut() {
            None => Ok(()),
            Some(t) => Ok(t.begin(self.writers)?),
        }
    }
    fn transactional(&self) -> bool {
        self.txn.is_some()
    }
}

impl Worker {
    /// Commits task `p`. A failure stops the worker under at-least-once;
    /// under exactly-once the task is reopened (`reopen`).
    pub(super) fn commit_one(&mut self, p: u32) -> Result<()> {
        let Some(o) = self.tasks.get_mut(&p) else {
            return Ok(());
        };
        match commit_task(&self.env, o) {
            Ok(()) => Ok(()),
            Err(e) if o.txn.is_some() => self.reopen(p, e),
            Err(e) => Err(e),
        }
    }

    pub(super) fn commit_all(&mut self) -> Result<()> {
        let parts: Vec<u32> = self.tasks.keys().copied().collect();
        for p in parts {
            self.commit_one(p)?;
        }
        Ok(())
    }
}

/// Whether a task's last commit failed under exactly-once (its
/// transaction was left open) and it must be reopened.
pub(super) fn broken(o: &Owned) -> bool {
    o.txn.as_ref().is_some_and(TaskTxn::is_open)
}

pub(super) fn commit_task(env: &WorkerEnv, o: &mut Owned) -> Result<()> {
    commit_task_sync(env, o, false)
}

fn commit_task_sync(env: &WorkerEnv, o: &mut Owned, sync: bool) -> Result<()> {
    if !o.task.has_pending() {
        return Ok(());
    }
    let started = Instant::now();
    let mut io = Io {
        writers: &mut o.writers,
        env,
        sync,
        txn: o.txn.as_mut(),
    };
    o.task.commit(&mut io, Timestamp::now())?;
    env.registry.set_stats(
        o.task.partition,
        o.task.stats.clone(),
        Some(started.elapsed().as_micros() as u64),
    );
    Ok(())
}

/// Commits a task that is about to be released (revoked, or the instance
/// stopping), offsets synchronously. With nothing pending a commit commits
/// nothing, but the last commit's offsets went out asynchronously and may
/// still be in flight (or have failed): they are committed again, and
/// waited for, so the next owner does not process again what this one
/// applied.
pub(super) fn commit_for_release(env: &WorkerEnv, o: &mut Owned) -> Result<()> {
    if o.task.has_pending() {
        return commit_task_sync(env, o, true);
    }
    if o.txn.is_some() {
        // Offsets went out with each transaction's commit.
        return Ok(());
    }
    let positions = o.task.input_positions();
    if positions.is_empty() {
        return Ok(());
    }
    Ok(env.group.commit_positions(&positions, true)?)
}
