//! The runtime's side of the consumer group: [`GroupEvents`] turned into
//! worker commands. A partition always goes to the same worker
//! ([`worker_of`]); a revocation waits for every affected worker's
//! acknowledgement (the worker commits and releases the task), bounded by
//! the revoke timeout; an assigned partition's queue goes to its worker; a
//! record that reached the main queue is forwarded to its partition's
//! worker, so nothing is lost.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_kafka::group::{GroupEvents, InputQueue, InputRecord};
use strata_state::Partition;

use super::worker::Command;
use crate::registry::Registry;

/// The worker that owns partition `p`'s task, of `workers`.
pub(crate) fn worker_of(p: Partition, workers: usize) -> usize {
    p.0 as usize % workers.max(1)
}

/// Relays the group's events to the workers.
pub(crate) struct Dispatch {
    pub registry: Registry,
    pub workers: Vec<mpsc::SyncSender<Command>>,
    pub revoke_timeout: Duration,
}

/// What became of a command sent to a worker.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Yes,
    Stopped,
    TimedOut,
}

impl Dispatch {
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

    /// Asks every worker to commit and stop, waiting (bounded) for each.
    pub(crate) fn shutdown_workers(&self) {
        for w in &self.workers {
            let (tx, rx) = mpsc::channel();
            if w.send(Command::Shutdown { ack: tx }).is_ok() {
                let _ = rx.recv_timeout(Duration::from_secs(60));
            }
        }
    }
}

impl GroupEvents for Dispatch {
    fn revoked(&self, parts: &[(String, Partition)]) {
        let started = Instant::now();
        let mut acks = Vec::new();
        for w in 0..self.workers.len() {
            let mine: Vec<(String, Partition)> = parts
                .iter()
                .filter(|(_, p)| worker_of(*p, self.workers.len()) == w)
                .cloned()
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
                // The worker has stopped (the app is shutting down): it
                // committed and released its tasks already.
                Sent::Stopped => {
                    tracing::debug!(worker = w, "worker already stopped; nothing to release")
                }
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
    }

    fn assigned(&self, topic: Arc<str>, partition: Partition, queue: InputQueue) {
        let deadline = Instant::now() + self.revoke_timeout;
        let w = worker_of(partition, self.workers.len());
        let cmd = Command::Assign {
            topic: topic.clone(),
            partition,
            queue: Box::new(queue),
        };
        if self.send(w, cmd, deadline) != Sent::Yes {
            tracing::error!(%topic, partition = partition.0, "cannot hand an assigned partition to its worker");
        }
    }

    fn stray(&self, record: InputRecord) -> strata_kafka::Result<()> {
        let w = worker_of(record.partition(), self.workers.len());
        self.workers[w]
            .send(Command::Stray(Box::new(record)))
            .map_err(|_| strata_kafka::Error::Stopped("a worker exited".into()))
    }

    fn lag(&self, topic: &str, partition: Partition, lag: u64) {
        self.registry.set_lag(topic, partition, lag);
    }
}
