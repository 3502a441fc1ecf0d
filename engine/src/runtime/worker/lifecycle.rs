//! A task's life on its worker: opening (on a thread of its own, restoring
//! every table from its changelog, fencing the previous owner under
//! exactly-once), adoption by the worker once restored, release on
//! revocation, reopening after a failed exactly-once commit, parking when
//! another owner fenced it, and closing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_kafka::changelog::{KafkaChangelogReader, KafkaChangelogWriter};
use strata_kafka::group::{InputQueue, InputRecord};
use strata_kafka::transactions::{self, TaskTxn};
use strata_kafka::txn::TxnId;
use strata_state::store::RocksStore;
use strata_state::{Location, Offset, Partition, TableName, TablePartition, Timestamp};

use super::commit::commit_for_release;
use super::env::{Opening, Owned, Worker, WorkerEnv, process_owned};
use crate::config::Guarantee;
use crate::registry::PartitionState;
use crate::task::Task;
use crate::{Error, Result};

/// Reads a changelog until told to stop (between two batches).
pub(super) struct Cancellable<R> {
    pub(super) inner: R,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) location: Location,
}

impl<R: strata_state::ChangelogReader> strata_state::ChangelogReader for Cancellable<R> {
    fn read(
        &mut self,
        from: Offset,
        max: usize,
    ) -> strata_state::Result<strata_state::changelog::ChangelogBatch> {
        if self.cancel.load(Ordering::Acquire) {
            return Err(strata_state::Error::Changelog {
                location: Box::new(self.location.clone()),
                message: "restore cancelled: the partition was revoked".into(),
                source: None,
            });
        }
        self.inner.read(from, max)
    }

    fn end_estimate(&mut self) -> Option<Offset> {
        self.inner.end_estimate()
    }
}

impl Worker {
    /// Opens partition `p`'s task on a thread of its own; `queues` feed it
    /// once it is restored.
    pub(super) fn start_opening(
        &mut self,
        partition: Partition,
        queues: Vec<(Arc<str>, Box<InputQueue>)>,
    ) -> Result<()> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (env, c) = (self.env.clone(), cancel.clone());
        let thread = std::thread::Builder::new()
            .name(format!("strata-open-{}", partition.0))
            .spawn(move || open_task(&env, partition, &c))
            .map_err(|e| Error::Io {
                context: "spawning a task's restore thread".into(),
                source: e,
            })?;
        self.opening.insert(
            partition.0,
            Opening {
                cancel,
                thread,
                queues,
            },
        );
        Ok(())
    }

    /// Exactly-once: a commit of task `p` failed, so its transaction did
    /// not commit (or its outcome is unknown). The task is closed with its
    /// producer, which is never used again, and reopened: a new producer
    /// fences the old one (resolving the transaction), local state is
    /// rolled back to its checkpoint (staged work is dropped; nothing was
    /// applied past the last commit) and restored to the changelog's
    /// committed end, and the inputs are read again from the committed
    /// offsets. If another instance's producer fenced this one, the task
    /// is parked instead: the group is moving it.
    pub(super) fn reopen(&mut self, p: u32, error: Error) -> Result<()> {
        let Some(mut o) = self.tasks.remove(&p) else {
            return Ok(());
        };
        let fenced = o.txn.as_ref().is_some_and(|t| t.fenced());
        if let Some(r) = self.replays.remove(&p) {
            r.interrupted();
        }
        let queues = std::mem::take(&mut o.queues);
        self.strays.remove(&p);
        self.restart_at.insert(p, o.task.first_offsets());
        self.env.registry.count_reopen(Partition(p));
        // Dropping the producer purges whatever it still holds.
        close_task(&self.env, o);
        if fenced {
            tracing::warn!(partition = p, %error,
                "another owner fenced this task's producer; the task is parked until the group revokes it");
            self.parked.insert(p, (Instant::now(), queues));
            return Ok(());
        }
        tracing::warn!(partition = p, %error,
            "commit failed under exactly-once; reopening the task from its checkpoint (the transaction is aborted by the new producer)");
        self.start_opening(Partition(p), queues)
    }

    /// Reopens parked tasks the group did not revoke within a session
    /// timeout.
    pub(super) fn unpark(&mut self) -> Result<()> {
        let wait = self.env.config.kafka.session_timeout;
        let due: Vec<u32> = self
            .parked
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= wait)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            let Some((_, queues)) = self.parked.remove(&p) else {
                continue;
            };
            tracing::info!(
                partition = p,
                "a parked task is still assigned here; reopening it"
            );
            self.start_opening(Partition(p), queues)?;
        }
        Ok(())
    }

    /// Moves tasks whose restore finished to the running ones (with the
    /// records that arrived for them meanwhile); true if any did.
    pub(super) fn adopt_opened(&mut self) -> Result<bool> {
        let done: Vec<u32> = self
            .opening
            .iter()
            .filter(|(_, op)| op.thread.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in &done {
            let Some(op) = self.opening.remove(p) else {
                continue;
            };
            let mut o = join_opening(op.thread, Partition(*p))?;
            o.queues = op.queues;
            let strays = self.strays.remove(p).unwrap_or_default();
            let restart_at = self.restart_at.remove(p).unwrap_or_default();
            if o.txn.is_some() {
                // Start exactly at the committed offsets, read after the
                // previous owner was fenced: what the consumer fetched
                // before (strays included) may predate that owner's last
                // commit, or skip records if nothing was committed yet.
                seek(&self.env, &o, &restart_at, &strays)?;
            } else {
                for m in strays {
                    process_owned(&mut o.task, &m)?;
                }
            }
            self.tasks.insert(*p, o);
        }
        Ok(!done.is_empty())
    }

    /// Stops every restore in progress and waits for it.
    pub(super) fn cancel_opening(&mut self) {
        for (p, op) in std::mem::take(&mut self.opening) {
            op.cancel.store(true, Ordering::Release);
            match op.thread.join() {
                Ok(Ok(o)) => close_task(&self.env, o),
                Ok(Err(e)) => {
                    tracing::info!(partition = p, error = %e, "restore stopped");
                    self.env.registry.remove_partition(Partition(p));
                }
                Err(_) => {
                    tracing::error!(partition = p, "a restore thread panicked");
                    self.env.registry.remove_partition(Partition(p));
                }
            }
        }
    }

    pub(super) fn revoke(&mut self, parts: Vec<(String, Partition)>) -> Result<()> {
        for (topic, p) in parts {
            self.strays.remove(&p.0);
            self.restart_at.remove(&p.0);
            if let Some((since, mut queues)) = self.parked.remove(&p.0) {
                queues.retain(|(t, _)| **t != *topic);
                if !queues.is_empty() {
                    self.parked.insert(p.0, (since, queues));
                }
                continue;
            }
            if let Some(mut op) = self.opening.remove(&p.0) {
                op.queues.retain(|(t, _)| **t != *topic);
                if !op.queues.is_empty() {
                    // Other co-partitioned topics still assigned here.
                    self.opening.insert(p.0, op);
                    continue;
                }
                // Nothing processed yet, so nothing to commit: stop the
                // restore and close what it opened.
                op.cancel.store(true, Ordering::Release);
                match op.thread.join() {
                    Ok(Ok(o)) => close_task(&self.env, o),
                    Ok(Err(e)) => {
                        tracing::info!(partition = %p, error = %e, "restore stopped: the partition was revoked");
                        self.env.registry.remove_partition(p);
                    }
                    Err(_) => {
                        self.env.registry.remove_partition(p);
                        return Err(Error::Stopped(format!(
                            "the restore thread of partition {p} panicked"
                        )));
                    }
                }
                continue;
            }
            if let Some(o) = self.tasks.get_mut(&p.0) {
                if let Err(e) = commit_for_release(&self.env, o) {
                    if o.txn.as_ref().is_some_and(|t| t.fenced()) {
                        // Exactly-once: this instance was frozen or cut off
                        // while the group moved the partition, and the new
                        // owner fenced its producer: nothing of the open
                        // transaction commits.
                        tracing::warn!(partition = %p, error = %e,
                            "producer fenced by the partition's new owner; the open transaction is aborted");
                    } else {
                        // The partition goes anyway. What reached the
                        // changelog is restored by the next owner, which
                        // processes again from the last committed offsets:
                        // a failure here (typically a member the group
                        // already dropped, after a session timeout) must
                        // not stop the worker's other tasks.
                        tracing::warn!(partition = %p, error = %e,
                            "commit on release failed; the next owner processes again from the last committed offsets");
                    }
                }
                o.queues.retain(|(t, _)| **t != *topic);
                if o.queues.is_empty()
                    && let Some(o) = self.tasks.remove(&p.0)
                {
                    if let Some(r) = self.replays.remove(&p.0) {
                        r.interrupted();
                    }
                    close_task(&self.env, o);
                }
            }
        }
        Ok(())
    }
}

/// Exactly-once: points each input queue of a task just opened at its
/// committed offset, or, for a topic nothing was committed for, at the
/// first offset the task's previous incarnation processed (`restart_at`,
/// after a reopen) or the first record the consumer fetched (`strays`,
/// which are dropped: the queue delivers them again).
fn seek(
    env: &WorkerEnv,
    o: &Owned,
    restart_at: &[(String, Offset)],
    strays: &[InputRecord],
) -> Result<()> {
    let p = o.task.partition;
    for (topic, _) in &o.queues {
        let committed = o
            .seek
            .iter()
            .chain(restart_at)
            .find(|(t, _)| **t == **topic)
            .map(|(_, n)| *n);
        let first_stray = strays
            .iter()
            .filter(|m| m.topic() == &**topic)
            .map(|m| m.offset())
            .min();
        let Some(at) = committed.or(first_stray) else {
            continue;
        };
        env.group.seek(topic, p, at)?;
        tracing::debug!(%topic, partition = p.0, offset = at.0, "input seeked to the committed offset");
    }
    Ok(())
}

fn partition_dir(env: &WorkerEnv, table: &str, p: Partition) -> PathBuf {
    env.config
        .state_dir
        .join(&env.config.application_id)
        .join(table)
        .join(p.0.to_string())
}

/// The outcome of a finished restore thread.
fn join_opening(thread: JoinHandle<Result<Owned>>, p: Partition) -> Result<Owned> {
    thread
        .join()
        .map_err(|_| Error::Stopped(format!("the restore thread of partition {p} panicked")))?
}

/// Opens a task's tables (wiping unusable local state) and restores each
/// from its changelog before the task processes anything; stops between
/// two restore batches once `cancel` is set.
fn open_task(env: &WorkerEnv, p: Partition, cancel: &Arc<AtomicBool>) -> Result<Owned> {
    let eos = env.config.guarantee == Guarantee::ExactlyOnce;
    // Exactly-once: fence every earlier producer of the task first. Its
    // open transaction is then resolved and nothing more of it can land,
    // so the committed offsets read next are final and the restore reads
    // a changelog that no one else writes.
    let producer = if eos {
        let id = format!("{}-task-{}", env.config.application_id, p.0);
        Some(transactions::fence(&env.config.kafka, &id)?)
    } else {
        None
    };
    let (tip, seek) = committed(env, p, eos)?;
    let mut max_epoch = tip.map_or(0, |t| t.epoch);
    let mut tables = Vec::new();
    let mut writers = Vec::new();
    for (name, options) in &env.tables {
        let cfg = options.table_config(TableName::new(name.clone())?, p);
        let dir = partition_dir(env, name, p);
        let mut table = match TablePartition::open_rocks(&dir, &env.rocks, cfg.clone()) {
            Ok(t) => t,
            Err(
                e @ (strata_state::Error::Corrupt { .. } | strata_state::Error::Protocol { .. }),
            ) => {
                tracing::warn!(table = %name, partition = %p, error = %e, "local state unusable; wiping it and rebuilding from the changelog");
                RocksStore::destroy(&dir).map_err(|e| Error::Io {
                    context: format!("wiping {}", dir.display()),
                    source: std::io::Error::other(e.message),
                })?;
                TablePartition::open_rocks(&dir, &env.rocks, cfg)?
            }
            Err(e) => return Err(e.into()),
        };
        let topic = env.config.changelog_topic(name);
        let location = Location {
            table: TableName::new(name.clone())?,
            partition: p,
        };
        env.registry.set_table(
            name,
            p,
            table.reader(),
            PartitionState::Restoring {
                records: 0,
                rate: 0.0,
            },
        );
        let mut reader = Cancellable {
            inner: KafkaChangelogReader::new(&env.config.kafka, topic.clone(), location.clone())?
                .with_tip(tip),
            cancel: cancel.clone(),
            location: location.clone(),
        };
        let started = Instant::now();
        let mut last_log = Instant::now();
        let from = table.checkpoint().changelog.map(|c| c.0.0 + 1).unwrap_or(0);
        tracing::info!(table = %name, partition = %p, from, "restoring from the changelog");
        let registry = env.registry.clone();
        let progress = table.restore_from(&mut reader, env.config.restore_batch, &mut |pr| {
            registry.set_state(name, p, PartitionState::Restoring { records: pr.read, rate: pr.rate });
            registry.set_restore_remaining(name, p, pr.end_estimate.map(|e| e.0.saturating_sub(pr.position.0)));
            if last_log.elapsed() >= Duration::from_secs(2) {
                tracing::info!(
                    table = %name, partition = %p, records = pr.read, rate = pr.rate as u64, position = pr.position.0,
                    end_estimate = pr.end_estimate.map(|o| o.0), eta_s = pr.eta.map(|d| d.as_secs()), "restoring"
                );
                last_log = Instant::now();
            }
        })?;
        let (seen, aborted) = reader.inner.txn_seen();
        max_epoch = max_epoch.max(seen);
        env.registry.count_aborted_skipped(aborted);
        tracing::info!(
            table = %name, partition = %p, records = progress.read, applied = progress.applied,
            aborted_skipped = aborted, elapsed_ms = started.elapsed().as_millis() as u64,
            version = table.latest_version().0, "restored"
        );
        env.registry
            .set_table(name, p, table.reader(), PartitionState::Running);
        writers.push(KafkaChangelogWriter::new(
            producer.clone().unwrap_or_else(|| env.changelog.clone()),
            topic,
            location,
        ));
        tables.push(table);
    }
    let txn = match producer {
        None => None,
        Some(producer) => Some(TaskTxn::new(
            producer,
            max_epoch,
            tip,
            p,
            env.config.transactions_topic(),
            env.config.kafka.request_timeout,
        )?),
    };
    let mut task = Task::new(p, env.sources.clone(), tables, env.dlq.clone());
    task.set_timers(&env.timers, Timestamp::now());
    env.registry.set_assigned(p);
    Ok(Owned {
        task,
        queues: Vec::new(),
        writers,
        txn,
        seek,
    })
}

/// The task's last committed transaction (the group's committed marker)
/// and, under exactly-once, its inputs' committed offsets.
/// A task's last committed transaction and its inputs' committed offsets.
type CommittedAt = (Option<TxnId>, Vec<(String, Offset)>);

fn committed(env: &WorkerEnv, p: Partition, eos: bool) -> Result<CommittedAt> {
    if !env.read_markers {
        return Ok((None, Vec::new()));
    }
    // Read under at-least-once too: a changelog written under exactly-once
    // before the switch still needs its last transaction resolved.
    let inputs: Vec<String> = if eos {
        env.sources.keys().cloned().collect()
    } else {
        Vec::new()
    };
    match transactions::committed(&env.group, &env.config.transactions_topic(), &inputs, p) {
        Ok(c) => Ok((c.tip, c.offsets)),
        Err(e) if !eos => {
            tracing::debug!(partition = %p, error = %e, "no transaction marker (never run exactly-once)");
            Ok((None, Vec::new()))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn close_task(env: &WorkerEnv, o: Owned) {
    let p = o.task.partition;
    for t in &o.task.tables.tables {
        if let Err(e) = t.flush() {
            tracing::warn!(partition = %p, error = %e, "flushing a table partition on close");
        }
    }
    env.registry.remove_partition(p);
    tracing::info!(partition = %p, "task closed");
}
