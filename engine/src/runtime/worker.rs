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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::message::{Message, OwnedMessage};
use strata_state::store::{RocksEnv, RocksStore};
use strata_state::{
    At, KeyRange, Location, Offset, Partition, RewindPlan, TableName, TablePartition, Timestamp,
};

use crate::config::{AppConfig, Guarantee};
use crate::context::OutRecord;
use crate::kafka::changelog::{ChangelogProducer, KafkaChangelogReader, KafkaChangelogWriter};
use crate::kafka::group::{GroupConsumer, GroupContext, commit_positions};
use crate::kafka::output::OutputProducer;
use crate::kafka::txn::{MAX_EPOCH, TXN_HEADER, TxnId, TxnTag};
use crate::registry::{PartitionState, Registry};
use crate::task::{CommitIo, RawRecord, SourceMap, Task};
use crate::topology::TableOptions;
use crate::{Error, Result};

mod replay;

/// A task's input queues, by physical topic.
type Queues = Vec<(Arc<str>, Box<PartitionQueue<GroupContext>>)>;

/// Most records buffered for partitions whose task does not exist yet.
const MAX_STRAYS: usize = 100_000;

/// What a worker is asked to do.
pub(crate) enum Command {
    /// Start reading `topic`'s partition from this queue.
    Assign {
        topic: Arc<str>,
        partition: Partition,
        queue: Box<PartitionQueue<GroupContext>>,
    },
    /// Commit and release these partitions, then acknowledge.
    Revoke {
        parts: Vec<(String, Partition)>,
        ack: mpsc::Sender<()>,
    },
    /// A record that reached the consumer's main queue.
    Stray(Box<OwnedMessage>),
    /// Rewind a table partition (or plan it, with `dry_run`); with
    /// `expect`, only if its latest version (after committing pending work)
    /// is that one.
    Rewind {
        table: usize,
        partition: Partition,
        at: At,
        range: KeyRange,
        dry_run: bool,
        expect: Option<strata_state::Version>,
        reply: mpsc::Sender<Result<RewindPlan>>,
    },
    /// Rewind every table of a partition's task to the commit time of
    /// `at` in `table` and replay its inputs from there (or plan it, with
    /// `dry_run`); with `expect`, only if `table`'s latest version (after
    /// committing pending work) is that one.
    Replay {
        table: usize,
        partition: Partition,
        at: At,
        dry_run: bool,
        expect: Option<strata_state::Version>,
        reply: mpsc::Sender<Result<crate::replay::ReplayOutcome>>,
    },
    /// Cancel the partition's running replay; `None` when none runs.
    CancelReplay {
        partition: Partition,
        reply: mpsc::Sender<Result<Option<crate::replay::ReplayProgress>>>,
    },
    /// Commit everything and stop.
    Shutdown { ack: mpsc::Sender<()> },
}

/// What every worker shares.
pub(crate) struct WorkerEnv {
    pub config: Arc<AppConfig>,
    pub sources: SourceMap,
    pub tables: Vec<(String, TableOptions)>,
    pub rocks: RocksEnv,
    pub changelog: Arc<ChangelogProducer>,
    pub outputs: Arc<OutputProducer>,
    pub consumer: Arc<GroupConsumer>,
    pub registry: Registry,
    pub dlq: Arc<str>,
    pub timers: Vec<crate::topology::TimerSpec>,
    /// Per table: how to send a change made by a rewind downstream.
    pub emitters: Vec<crate::topology::ChangeFn>,
    /// The physical repartition topics (a task reading one cannot replay).
    pub repartition: std::collections::BTreeSet<String>,
    /// Whether tasks read their committed transaction marker on opening
    /// (exactly-once, or a transactions topic left by it).
    pub read_markers: bool,
}

/// A task being opened on a thread of its own.
struct Opening {
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<Result<Owned>>,
    /// Queues assigned while it opens.
    queues: Vec<(Arc<str>, Box<PartitionQueue<GroupContext>>)>,
}

/// Reads a changelog until told to stop (between two batches).
struct Cancellable<R> {
    inner: R,
    cancel: Arc<AtomicBool>,
    location: Location,
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

struct Owned {
    task: Task<RocksStore>,
    queues: Vec<(Arc<str>, Box<PartitionQueue<GroupContext>>)>,
    writers: Vec<KafkaChangelogWriter>,
    /// Exactly-once: the task's producer and transactions.
    txn: Option<TaskTxn>,
    /// Exactly-once: where each input topic's queue must start (the
    /// committed offsets, read after fencing the previous owner).
    seek: Vec<(String, i64)>,
}

/// A task's transactional producer and where its transactions stand
/// (exactly-once; see `crate::kafka::txn`).
struct TaskTxn {
    producer: Arc<ChangelogProducer>,
    /// This life of the task's producer.
    epoch: u32,
    /// The last transaction committed in this epoch (0: none yet).
    seq: u64,
    /// The last committed transaction when the epoch began.
    base: Option<TxnId>,
    /// A transaction is open: begun and neither committed nor abandoned.
    /// A commit that leaves it open failed, and the task must be reopened.
    open: bool,
}

impl TaskTxn {
    fn next(&self) -> TxnId {
        TxnId {
            epoch: self.epoch,
            seq: self.seq + 1,
        }
    }
}

struct Io<'a> {
    writers: &'a mut [KafkaChangelogWriter],
    env: &'a WorkerEnv,
    /// Commit offsets synchronously (the task is being released).
    sync: bool,
    txn: Option<&'a mut TaskTxn>,
    partition: Partition,
}

impl CommitIo for Io<'_> {
    fn changelog(&mut self, table: usize) -> &mut dyn strata_state::ChangelogWriter {
        &mut self.writers[table]
    }
    fn produce(&mut self, records: &[OutRecord]) -> Result<()> {
        match &self.txn {
            None => self.env.outputs.produce(records),
            Some(t) => {
                let tag = TxnTag::Data(t.next()).encode();
                let outputs = &self.env.outputs;
                t.producer.produce_outputs(
                    records,
                    &|logical| outputs.physical(logical).to_string(),
                    Some((TXN_HEADER, &tag)),
                )
            }
        }
    }
    fn commit_offsets(&mut self, positions: &[strata_state::InputOffset]) -> Result<()> {
        let Some(t) = self.txn.as_deref_mut() else {
            return commit_positions(&self.env.consumer, positions, self.sync);
        };
        let id = t.next();
        let mut tpl = TopicPartitionList::with_capacity(positions.len() + 1);
        let p = self.partition.0 as i32;
        let add = |tpl: &mut TopicPartitionList, topic: &str, offset: i64| {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(offset))
                .map_err(|e| Error::kafka("building a transactional offset commit", e))
        };
        for i in positions {
            add(&mut tpl, &i.topic, i.next.0 as i64)?;
        }
        add(
            &mut tpl,
            &self.env.config.transactions_topic(),
            id.marker_offset(),
        )?;
        let group = self.env.consumer.group_metadata().ok_or_else(|| {
            Error::Stopped(
                "the group consumer has no group metadata for a transactional offset commit".into(),
            )
        })?;
        let timeout = self.env.config.kafka.request_timeout;
        t.producer.send_offsets(&tpl, &group, timeout)?;
        fail::fail_point!("txn-before-commit", |_| crate::task::crash(
            "txn-before-commit"
        ));
        // A commit whose outcome is unknown, with the transaction left
        // open (tests/exactly_once_unknown.rs).
        fail::fail_point!("txn-commit-unknown-open", |_| Err(Error::OutcomeUnknown {
            context: "failpoint txn-commit-unknown-open: the commit was never sent".into(),
            timeout_ms: 0,
        }));
        t.producer.commit_transaction(timeout)?;
        // ... or committed, but reported unknown.
        fail::fail_point!("txn-commit-unknown-committed", |_| Err(
            Error::OutcomeUnknown {
                context: "failpoint txn-commit-unknown-committed: the commit went through".into(),
                timeout_ms: 0,
            }
        ));
        t.seq = id.seq;
        t.open = false;
        Ok(())
    }
    fn begin(&mut self) -> Result<()> {
        let Some(t) = self.txn.as_deref_mut() else {
            return Ok(());
        };
        if t.open {
            return Err(Error::Stopped(format!(
                "task {}: a transaction whose outcome is unknown is still open; the task must be reopened",
                self.partition
            )));
        }
        t.producer.begin_transaction()?;
        t.open = true;
        let id = t.next();
        for w in self.writers.iter_mut() {
            if t.seq == 0 {
                // The epoch's first transaction: its fence goes to every
                // changelog, first.
                w.set_tag(None);
                w.append_fence(TxnTag::Fence { id, base: t.base })?;
            }
            w.set_tag(Some(TxnTag::Data(id)));
        }
        Ok(())
    }
    fn transactional(&self) -> bool {
        self.txn.is_some()
    }
}

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

#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

struct Worker {
    env: Arc<WorkerEnv>,
    tasks: BTreeMap<u32, Owned>,
    /// Tasks restoring on threads of their own.
    opening: BTreeMap<u32, Opening>,
    /// Records that arrived before their partition's task existed.
    strays: BTreeMap<u32, Vec<OwnedMessage>>,
    /// Exactly-once: tasks whose producer another owner fenced, with their
    /// queues and when that happened. Reopened after a session timeout if
    /// the group has not revoked them meanwhile.
    parked: BTreeMap<u32, (Instant, Queues)>,
    /// Exactly-once: where a reopened task must start reading the topics
    /// nothing was committed for yet (the first offsets its previous
    /// incarnation processed).
    restart_at: BTreeMap<u32, Vec<(String, i64)>>,
    /// Replays of tasks owned here (running, or the last one ended).
    replays: BTreeMap<u32, replay::Replay>,
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
            Command::Stray(m) => match self.tasks.get_mut(&(m.partition() as u32)) {
                // (A partition still opening keeps its strays buffered.)
                Some(o) => {
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
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
                    self.strays
                        .entry(m.partition() as u32)
                        .or_default()
                        .push(*m)
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

    /// Opens partition `p`'s task on a thread of its own; `queues` feed it
    /// once it is restored.
    fn start_opening(
        &mut self,
        partition: Partition,
        queues: Vec<(Arc<str>, Box<PartitionQueue<GroupContext>>)>,
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
    fn reopen(&mut self, p: u32, error: Error) -> Result<()> {
        let Some(mut o) = self.tasks.remove(&p) else {
            return Ok(());
        };
        let fenced = o.txn.as_ref().is_some_and(|t| t.producer.fenced());
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

    /// Reopens parked tasks the group did not revoke within a session
    /// timeout.
    fn unpark(&mut self) -> Result<()> {
        let wait = self.env.config.kafka.session_timeout;
        let due: Vec<u32> = self
            .parked
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= wait)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            let (_, queues) = self.parked.remove(&p).expect("listed");
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
    fn adopt_opened(&mut self) -> Result<bool> {
        let done: Vec<u32> = self
            .opening
            .iter()
            .filter(|(_, op)| op.thread.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in &done {
            let op = self.opening.remove(p).expect("listed");
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
    fn cancel_opening(&mut self) {
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

    fn revoke(&mut self, parts: Vec<(String, Partition)>) -> Result<()> {
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
                    if o.txn.as_ref().is_some_and(|t| t.producer.fenced()) {
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
                    match queue.poll(Duration::ZERO) {
                        Some(Ok(m)) => {
                            any = true;
                            let raw = RawRecord {
                                topic,
                                partition: Partition(m.partition() as u32),
                                offset: Offset(m.offset() as u64),
                                timestamp: m.timestamp().to_millis(),
                                key: m.key(),
                                value: m.payload(),
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

    /// Commits task `p`. A failure stops the worker under at-least-once;
    /// under exactly-once the task is reopened (`reopen`).
    fn commit_one(&mut self, p: u32) -> Result<()> {
        let Some(o) = self.tasks.get_mut(&p) else {
            return Ok(());
        };
        match commit_task(&self.env, o) {
            Ok(()) => Ok(()),
            Err(e) if o.txn.is_some() => self.reopen(p, e),
            Err(e) => Err(e),
        }
    }

    fn commit_all(&mut self) -> Result<()> {
        let parts: Vec<u32> = self.tasks.keys().copied().collect();
        for p in parts {
            self.commit_one(p)?;
        }
        Ok(())
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

/// Whether a task's last commit failed under exactly-once (its
/// transaction was left open) and it must be reopened.
fn broken(o: &Owned) -> bool {
    o.txn.as_ref().is_some_and(|t| t.open)
}

/// Exactly-once: points each input queue of a task just opened at its
/// committed offset, or, for a topic nothing was committed for, at the
/// first offset the task's previous incarnation processed (`restart_at`,
/// after a reopen) or the first record the consumer fetched (`strays`,
/// which are dropped: the queue delivers them again).
fn seek(
    env: &WorkerEnv,
    o: &Owned,
    restart_at: &[(String, i64)],
    strays: &[OwnedMessage],
) -> Result<()> {
    let p = o.task.partition.0 as i32;
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
        env.consumer
            .seek(
                topic,
                p,
                rdkafka::Offset::Offset(at),
                env.config.kafka.request_timeout,
            )
            .map_err(|e| {
                Error::kafka(
                    format!("seeking {topic}[{p}] to its committed offset {at}"),
                    e,
                )
            })?;
        tracing::debug!(%topic, partition = p, offset = at, "input seeked to the committed offset");
    }
    Ok(())
}

fn process_owned(task: &mut Task<RocksStore>, m: &OwnedMessage) -> Result<()> {
    let topic: Arc<str> = Arc::from(m.topic());
    let raw = RawRecord {
        topic: &topic,
        partition: Partition(m.partition() as u32),
        offset: Offset(m.offset() as u64),
        timestamp: m.timestamp().to_millis(),
        key: m.key(),
        value: m.payload(),
    };
    task.process(&raw)
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
        let producer = ChangelogProducer::transactional(&env.config.kafka, &id)?;
        producer.init_transactions(env.config.kafka.request_timeout)?;
        tracing::debug!(partition = %p, transactional_id = %id, "task producer initialized");
        Some(producer)
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
        Some(producer) => {
            let epoch = max_epoch + 1;
            if epoch > MAX_EPOCH {
                return Err(Error::Stopped(format!(
                    "task {p} has used all {MAX_EPOCH} transaction epochs; reset the application's \
                     transactions topic offsets to reuse them"
                )));
            }
            tracing::info!(partition = %p, epoch, tip = ?tip.map(|t| t.to_string()), "task opened for exactly-once");
            Some(TaskTxn {
                producer,
                epoch,
                seq: 0,
                base: tip,
                open: false,
            })
        }
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
#[allow(clippy::type_complexity)]
fn committed(
    env: &WorkerEnv,
    p: Partition,
    eos: bool,
) -> Result<(Option<TxnId>, Vec<(String, i64)>)> {
    let marker = env.config.transactions_topic();
    let at = p.0 as i32;
    let mut tpl = TopicPartitionList::new();
    if eos {
        for topic in env.sources.keys() {
            tpl.add_partition(topic, at);
        }
    }
    if !env.read_markers {
        return Ok((None, Vec::new()));
    }
    // Read under at-least-once too: a changelog written under exactly-once
    // before the switch still needs its last transaction resolved.
    tpl.add_partition(&marker, at);
    let list = match env
        .consumer
        .committed_offsets(tpl, env.config.kafka.request_timeout)
    {
        Ok(l) => l,
        Err(e) if !eos => {
            tracing::debug!(partition = %p, error = %e, "no transaction marker (never run exactly-once)");
            return Ok((None, Vec::new()));
        }
        Err(e) => {
            return Err(Error::kafka(
                format!("reading the committed offsets of task {p}"),
                e,
            ));
        }
    };
    let (mut tip, mut seek) = (None, Vec::new());
    for e in list.elements() {
        if let rdkafka::Offset::Offset(n) = e.offset() {
            if e.topic() == marker {
                tip = TxnId::from_marker_offset(n);
            } else {
                seek.push((e.topic().to_string(), n));
            }
        }
    }
    Ok((tip, seek))
}

fn commit_task(env: &WorkerEnv, o: &mut Owned) -> Result<()> {
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
        partition: o.task.partition,
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
fn commit_for_release(env: &WorkerEnv, o: &mut Owned) -> Result<()> {
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
    commit_positions(&env.consumer, &positions, true)
}

fn close_task(env: &WorkerEnv, o: Owned) {
    let p = o.task.partition;
    for t in &o.task.tables.tables {
        if let Err(e) = t.flush() {
            tracing::warn!(partition = %p, error = %e, "flushing a table partition on close");
        }
    }
    env.registry.remove_partition(p);
    tracing::info!(partition = %p, "task closed");
}

/// Fails unless table partition `t`'s latest version is `expect` (when
/// given): a rewind or replay applies only what was reviewed.
fn check_latest(
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
fn rewind(
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
        partition: o.task.partition,
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
