//! A worker thread: owns the tasks of the partitions routed to it (a
//! partition always goes to the same worker), feeds each from its split
//! partition queue, commits on the commit interval, restores tasks on
//! assignment and releases them on revocation.
//!
//! A task's tables are touched only by its worker thread, so they need no
//! locks; other threads reach them through commands (rewind) or through
//! read-only readers in the registry.
//!
//! Opening a task (restoring its tables from their changelogs) runs on a
//! thread of its own, so the worker's other tasks keep processing and
//! committing meanwhile; the task joins the worker when it is restored. A
//! partition revoked while it opens has its restore cancelled (between two
//! batches) and its state closed; the restored part stays on disk for the
//! next owner here.

//!
//! The jobs, by file: the event loop and its commands (here), a task's
//! life (`lifecycle`), the commit adapter (`commit`), rewinds (`rewind`)
//! and replays (`replay`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_state::{At, Partition, Timestamp};

use crate::task::RawRecord;
use crate::{Error, Result};

mod commit;
mod env;
mod lifecycle;
mod replay;
mod rewind;

use commit::{broken, commit_for_release, commit_task};
pub(crate) use env::{Command, WorkerEnv};
use env::{Flow, MAX_STRAYS, Worker, process_owned};
use lifecycle::close_task;
use rewind::{check_latest, rewind};

/// Runs one worker until shutdown or a fatal error.
pub(crate) fn run(id: usize, env: Arc<WorkerEnv>, rx: mpsc::Receiver<Command>) -> Result<()> {
    let mut w = Worker {
        env,
        tasks: BTreeMap::new(),
        opening: BTreeMap::new(),
        strays: BTreeMap::new(),
        parked: BTreeMap::new(),
        restart_at: BTreeMap::new(),
        replays: BTreeMap::new(),
    };
    let mut last_commit = Instant::now();
    let span = tracing::info_span!("worker", id);
    let _g = span.enter();
    loop {
        // Commands first: rebalances must not wait behind processing.
        let mut idle = true;
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    idle = false;
                    if w.handle(cmd)? == Flow::Stop {
                        return Ok(());
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    w.cancel_opening();
                    return w.commit_all();
                }
            }
        }
        // Tasks whose restore finished join the others.
        if w.adopt_opened()? {
            idle = false;
        }
        w.unpark()?;
        // Then records, a bounded batch per partition queue.
        if w.poll_records()? {
            idle = false;
        }
        if last_commit.elapsed() >= w.env.config.commit_interval {
            w.commit_all()?;
            last_commit = Instant::now();
        }
        if idle {
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(cmd) => {
                    if w.handle(cmd)? == Flow::Stop {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    w.cancel_opening();
                    return w.commit_all();
                }
            }
        }
    }
}

impl Worker {
    fn handle(&mut self, cmd: Command) -> Result<Flow> {
        let env = &*self.env.clone();
        match cmd {
            Command::Assign {
                topic,
                partition,
                queue,
            } => {
                if let Some(o) = self.tasks.get_mut(&partition.0) {
                    o.queues.push((topic, queue));
                } else if let Some(op) = self.opening.get_mut(&partition.0) {
                    op.queues.push((topic, queue));
                } else if let Some((_, queues)) = self.parked.get_mut(&partition.0) {
                    queues.push((topic, queue));
                } else {
                    self.start_opening(partition, vec![(topic, queue)])?;
                }
            }
            Command::Revoke { parts, ack } => {
                let r = self.revoke(parts);
                let _ = ack.send(());
                r?;
            }
            Command::Stray(m) => match self.tasks.get_mut(&m.partition().0) {
                // (A partition still opening keeps its strays buffered.)
                Some(o) => {
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition().0,
                        offset = m.offset().0,
                        "record from the main queue after its partition was split"
                    );
                    process_owned(&mut o.task, &m)?
                }
                None => {
                    let buffered: usize = self.strays.values().map(Vec::len).sum();
                    if buffered >= MAX_STRAYS {
                        return Err(Error::Stopped(format!(
                            "more than {MAX_STRAYS} records arrived for partitions without a task"
                        )));
                    }
                    self.strays.entry(m.partition().0).or_default().push(*m)
                }
            },
            Command::Rewind {
                table,
                partition,
                at,
                range,
                dry_run,
                expect,
                reply,
            } => {
                let r = rewind(
                    env,
                    &mut self.tasks,
                    table,
                    partition,
                    at,
                    range,
                    dry_run,
                    expect,
                );
                self.answer(partition, r, &reply)?;
            }
            Command::Replay {
                table,
                partition,
                at,
                dry_run,
                expect,
                reply,
            } => {
                let r = self.replay(table, partition, at, dry_run, expect);
                self.answer(partition, r, &reply)?;
            }
            Command::CancelReplay { partition, reply } => {
                let r = match (
                    self.tasks.get_mut(&partition.0),
                    self.replays.get_mut(&partition.0),
                ) {
                    (None, _) => Err(Error::Stopped(format!(
                        "partition {partition} is not owned by this instance"
                    ))),
                    (Some(_), None) => Ok(None),
                    (Some(o), Some(r)) if r.running() => replay::cancel(env, o, r).map(Some),
                    (Some(_), Some(_)) => Ok(None),
                };
                let _ = reply.send(r);
            }
            Command::Shutdown { ack } => {
                self.cancel_opening();
                for r in std::mem::take(&mut self.replays).values() {
                    r.interrupted();
                }
                let mut r = Ok(());
                for o in self.tasks.values_mut() {
                    if let Err(e) = commit_for_release(env, o) {
                        r = Err(e);
                        break;
                    }
                }
                for (_, o) in std::mem::take(&mut self.tasks) {
                    close_task(env, o);
                }
                self.parked.clear();
                let _ = ack.send(());
                r?;
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Go)
    }

    /// Sends an admin command's outcome; if the command's commit failed
    /// under exactly-once (its transaction left open), reopens the task.
    fn answer<T>(
        &mut self,
        p: Partition,
        r: Result<T>,
        reply: &mpsc::Sender<Result<T>>,
    ) -> Result<()> {
        let failed = match &r {
            Err(e) if self.tasks.get(&p.0).is_some_and(broken) => {
                Some(Error::Stopped(e.to_string()))
            }
            _ => None,
        };
        let _ = reply.send(r);
        match failed {
            Some(e) => self.reopen(p.0, e),
            None => Ok(()),
        }
    }

    /// Processes a bounded batch from every queue; true if any record came.
    fn poll_records(&mut self) -> Result<bool> {
        let env = &*self.env;
        let mut any = false;
        let now = Timestamp::now();
        for (p, o) in self.tasks.iter_mut() {
            o.task.fire_timers(now);
            let mut replay = self.replays.get_mut(p).filter(|r| r.running());
            for (topic, queue) in &o.queues {
                for _ in 0..env.config.poll_batch {
                    match queue.poll() {
                        Some(Ok(m)) => {
                            any = true;
                            let raw = RawRecord {
                                topic,
                                partition: m.partition(),
                                offset: m.offset(),
                                timestamp: m.timestamp(),
                                key: m.key(),
                                value: m.value(),
                            };
                            let replayed =
                                replay.as_ref().is_some_and(|r| r.covers(topic, raw.offset));
                            o.task.replay = replayed;
                            o.task.process(&raw)?;
                            if replayed && let Some(r) = replay.as_mut() {
                                r.count();
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, %topic, "partition queue error");
                            break;
                        }
                        None => break,
                    }
                }
            }
            o.task.replay = false;
            if let Some(r) = replay {
                let pending = o.task.has_pending();
                r.update(env, o.task.positions(), pending);
            }
        }
        let full: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, o)| o.task.is_full(env.config.max_buffered_outputs))
            .map(|(p, _)| *p)
            .collect();
        for p in full {
            self.commit_one(p)?;
        }
        Ok(any)
    }

    /// Plans or starts a replay of a partition's task (see `replay.rs`).
    fn replay(
        &mut self,
        table: usize,
        p: Partition,
        at: At,
        dry_run: bool,
        expect: Option<strata_state::Version>,
    ) -> Result<crate::replay::ReplayOutcome> {
        let env = &*self.env;
        let o = self.tasks.get_mut(&p.0).ok_or_else(|| {
            Error::Stopped(format!("partition {p} is not owned by this instance"))
        })?;
        if self.replays.get(&p.0).is_some_and(|r| r.running()) {
            return Err(Error::Precondition(format!(
                "partition {p} is already replaying; wait for it to finish (DescribeTable shows its progress) \
                 or cancel it first"
            )));
        }
        commit_task(env, o)?;
        let t = o
            .task
            .tables
            .tables
            .get(table)
            .ok_or_else(|| Error::Topology(format!("no table #{table}")))?;
        // As for a rewind: checked after the commit above, on the
        // partition's own thread.
        check_latest(t, p, expect, "replay")?;
        let (outcome, started) = replay::start(env, o, table, at, dry_run)?;
        if let Some(r) = started {
            self.replays.insert(p.0, r);
        }
        Ok(outcome)
    }
}
