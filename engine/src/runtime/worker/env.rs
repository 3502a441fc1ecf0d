//! What a worker holds: its commands, the environment every worker
//! shares, its tasks (running, opening, parked) and the records waiting
//! for them. The other files of the worker build on these types and
//! nothing here names them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use strata_kafka::changelog::KafkaChangelogWriter;
use strata_kafka::group::{Group, InputQueue, InputRecord};
use strata_kafka::output::OutputProducer;
use strata_kafka::producer::AckedProducer;
use strata_kafka::transactions::TaskTxn;
use strata_state::store::{RocksEnv, RocksStore};
use strata_state::{At, KeyRange, Offset, Partition, RewindPlan};

use crate::Result;
use crate::config::AppConfig;
use crate::registry::Registry;
use crate::replay::ReplayProgress;
use crate::task::{RawRecord, SourceMap, Task};
use crate::topology::TableOptions;

/// A task's input queues, by physical topic.
pub(super) type Queues = Vec<(Arc<str>, Box<InputQueue>)>;

/// Most records buffered for partitions whose task does not exist yet.
pub(super) const MAX_STRAYS: usize = 100_000;

/// What a worker is asked to do.
pub(crate) enum Command {
    /// Start reading `topic`'s partition from this queue.
    Assign {
        topic: Arc<str>,
        partition: Partition,
        queue: Box<InputQueue>,
    },
    /// Commit and release these partitions, then acknowledge.
    Revoke {
        parts: Vec<(String, Partition)>,
        ack: mpsc::Sender<()>,
    },
    /// A record that reached the consumer's main queue.
    Stray(Box<InputRecord>),
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
    pub changelog: Arc<AckedProducer>,
    pub outputs: Arc<OutputProducer>,
    pub group: Group,
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

#[derive(PartialEq, Eq)]
pub(super) enum Flow {
    Go,
    Stop,
}

pub(super) struct Worker {
    pub(super) env: Arc<WorkerEnv>,
    pub(super) tasks: BTreeMap<u32, Owned>,
    /// Tasks restoring on threads of their own.
    pub(super) opening: BTreeMap<u32, Opening>,
    /// Records that arrived before their partition's task existed.
    pub(super) strays: BTreeMap<u32, Vec<InputRecord>>,
    /// Exactly-once: tasks whose producer another owner fenced, with their
    /// queues and when that happened. Reopened after a session timeout if
    /// the group has not revoked them meanwhile.
    pub(super) parked: BTreeMap<u32, (Instant, Queues)>,
    /// Exactly-once: where a reopened task must start reading the topics
    /// nothing was committed for yet (the first offsets its previous
    /// incarnation processed).
    pub(super) restart_at: BTreeMap<u32, Vec<(String, Offset)>>,
    /// Replays of tasks owned here (running, or the last one ended).
    pub(super) replays: BTreeMap<u32, Replay>,
}

pub(super) fn process_owned(task: &mut Task<RocksStore>, m: &InputRecord) -> Result<()> {
    let topic: Arc<str> = Arc::from(m.topic());
    let raw = RawRecord {
        topic: &topic,
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp(),
        key: m.key(),
        value: m.value(),
    };
    task.process(&raw)
}

/// A task being opened on a thread of its own.
pub(super) struct Opening {
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) thread: JoinHandle<Result<Owned>>,
    /// Queues assigned while it opens.
    pub(super) queues: Vec<(Arc<str>, Box<InputQueue>)>,
}

pub(super) struct Owned {
    pub(super) task: Task<RocksStore>,
    pub(super) queues: Vec<(Arc<str>, Box<InputQueue>)>,
    pub(super) writers: Vec<KafkaChangelogWriter>,
    /// Exactly-once: the task's producer and transactions.
    pub(super) txn: Option<TaskTxn>,
    /// Exactly-once: where each input topic's queue must start (the
    /// committed offsets, read after fencing the previous owner).
    pub(super) seek: Vec<(String, Offset)>,
}

/// A replay in progress on one task.
pub(super) struct Replay {
    pub(super) progress: ReplayProgress,
    /// Records of a topic below its bound are replayed.
    pub(super) until: BTreeMap<Arc<str>, Offset>,
    pub(super) started: Instant,
    pub(super) last_publish: Instant,
    pub(super) last_log: Instant,
}
