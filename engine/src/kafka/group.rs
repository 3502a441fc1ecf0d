//! The consumer group driver: one thread owns the group consumer, polls it
//! (which serves rebalances and heartbeats), and hands each assigned
//! partition's queue to the worker that will own its task.
//!
//! Rebalance callbacks do no slow work: a revocation sends each affected
//! worker a message and waits for its acknowledgement (the worker commits
//! and releases the task); an assignment splits each partition's queue off
//! the consumer right in the callback, before its first fetch can deliver
//! anything, and sends it to the partition's worker. A record that reached
//! the main queue anyway is forwarded to the partition's worker, so nothing
//! is lost. If a worker stops on an error, the poll loop stops the others
//! and the instance leaves the group, so its partitions move elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};
use strata_state::Partition;

use super::client::log_to_tracing;
use crate::runtime::worker::Command;
use crate::{Error, Result};

/// The group consumer's context: relays rebalances to workers.
pub(crate) struct GroupContext {
    registry: crate::registry::Registry,
    workers: Vec<mpsc::SyncSender<Command>>,
    /// The consumer itself, to split partition queues in the assignment
    /// callback (set right after creation; weak, so no cycle).
    consumer: std::sync::OnceLock<std::sync::Weak<GroupConsumer>>,
    revoke_timeout: Duration,
}

impl GroupContext {
    pub fn new(
        registry: crate::registry::Registry,
        workers: Vec<mpsc::SyncSender<Command>>,
        revoke_timeout: Duration,
    ) -> Self {
        GroupContext {
            registry,
            workers,
            consumer: std::sync::OnceLock::new(),
            revoke_timeout,
        }
    }

    /// Lets the context reach its consumer (call once, before subscribing).
    pub fn attach(consumer: &Arc<GroupConsumer>) {
        let _ = consumer.context().consumer.set(Arc::downgrade(consumer));
    }

    /// Sends a command, waiting at most until `deadline` for room.
    fn send(&self, w: usize, mut cmd: Command, deadline: Instant) -> Sent {
        loop {
            match self.workers[w].try_send(cmd) {
                Ok(()) => return Sent::Yes,
                Err(mpsc::TrySendError::Disconnected(_)) => return Sent::Stopped,
                Err(mpsc::TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return Sent::TimedOut;
                    }
                    cmd = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    fn worker_of(&self, p: i32) -> usize {
        (p.max(0) as usize) % self.workers.len().max(1)
    }
}

fn elements(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        log_to_tracing(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka consumer error");
    }

    /// librdkafka's periodic statistics: the consumer lag of every
    /// assigned partition (from the fetch path, not ListOffsets).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.registry
                        .set_lag(topic, Partition(*p as u32), s.consumer_lag as u64);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = elements(tpl);
                tracing::info!(partitions = ?parts, "partitions revoked");
                let started = Instant::now();
                let mut acks = Vec::new();
                for w in 0..self.workers.len() {
                    let mine: Vec<(String, Partition)> = parts
                        .iter()
                        .filter(|(_, p)| self.worker_of(*p) == w)
                        .map(|(t, p)| (t.clone(), Partition(*p as u32)))
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let (tx, rx) = mpsc::channel();
                    match self.send(
                        w,
                        Command::Revoke {
                            parts: mine,
                            ack: tx,
                        },
                        started + self.revoke_timeout,
                    ) {
                        Sent::Yes => acks.push(rx),
                        // The worker has stopped (the app is shutting down):
                        // it committed and released its tasks already.
                        Sent::Stopped => tracing::debug!(
                            worker = w,
                            "worker already stopped; nothing to release"
                        ),
                        Sent::TimedOut => tracing::error!(
                            worker = w,
                            "cannot reach a worker to release revoked partitions in time"
                        ),
                    }
                }
                for rx in acks {
                    let left = self.revoke_timeout.saturating_sub(started.elapsed());
                    if rx.recv_timeout(left).is_err() {
                        tracing::error!(
                            timeout_ms = self.revoke_timeout.as_millis() as u64,
                            "a worker did not release revoked partitions in time"
                        );
                    }
                }
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "revocation complete"
                );
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = elements(tpl);
            tracing::info!(partitions = ?parts, "partitions assigned");
            let Some(consumer) = self.consumer.get().and_then(std::sync::Weak::upgrade) else {
                tracing::error!("assignment before the consumer was attached");
                return;
            };
            let deadline = Instant::now() + self.revoke_timeout;
            for (topic, p) in parts {
                let Some(queue) = consumer.split_partition_queue(&topic, p) else {
                    tracing::error!(%topic, partition = p, "cannot split the partition's queue");
                    continue;
                };
                let cmd = Command::Assign {
                    topic: Arc::from(topic.as_str()),
                    partition: Partition(p as u32),
                    queue: Box::new(queue),
                };
                if self.send(self.worker_of(p), cmd, deadline) != Sent::Yes {
                    tracing::error!(%topic, partition = p, "cannot hand an assigned partition to its worker");
                }
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(error = %e, offsets = ?elements(offsets), "offset commit failed; the next commit retries");
        }
    }
}

/// What became of a command sent to a worker.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Yes,
    Stopped,
    TimedOut,
}

/// The consumer, shared by the poll thread and the workers (which commit
/// offsets and read their split partition queues).
pub(crate) type GroupConsumer = BaseConsumer<GroupContext>;

/// Runs the poll loop until `stop` is set.
pub(crate) fn run_poll_loop(
    consumer: Arc<GroupConsumer>,
    workers: Vec<mpsc::SyncSender<Command>>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) -> Result<()> {
    let worker_of = |p: i32| (p.max(0) as usize) % workers.len().max(1);
    while !stop.load(Ordering::Acquire) {
        if failed.load(Ordering::Acquire) {
            // A worker died: stop the others so this instance leaves the
            // group and its partitions move to healthy instances.
            for w in &workers {
                let (tx, rx) = mpsc::channel();
                if w.send(Command::Shutdown { ack: tx }).is_ok() {
                    let _ = rx.recv_timeout(Duration::from_secs(60));
                }
            }
            return Err(Error::Stopped(
                "a worker failed; the instance left its group".into(),
            ));
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                // Fetched before its partition's queue was split off.
                let owned: OwnedMessage = m.detach();
                let w = worker_of(owned.partition());
                if workers[w].send(Command::Stray(Box::new(owned))).is_err() {
                    return Err(Error::Stopped("a worker exited".into()));
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
    }
    Ok(())
}

/// Commits input positions for a task: asynchronously on the hot path (a
/// failure is logged by the commit callback and covered by the task's next
/// commit), synchronously when the task is released, so the next owner
/// starts exactly after it.
pub(crate) fn commit_positions(
    consumer: &GroupConsumer,
    positions: &[strata_state::InputOffset],
    sync: bool,
) -> Result<()> {
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for p in positions {
        tpl.add_partition_offset(
            &p.topic,
            p.partition.0 as i32,
            rdkafka::Offset::Offset(p.next.0 as i64),
        )
        .map_err(|e| Error::kafka("building an offset commit", e))?;
    }
    let mode = if sync {
        rdkafka::consumer::CommitMode::Sync
    } else {
        rdkafka::consumer::CommitMode::Async
    };
    consumer
        .commit(&tpl, mode)
        .map_err(|e| Error::kafka("committing offsets", e))
}
