//! A task's transactions (exactly-once): the fencing producer, the
//! committed marker, and the commit that puts changelog records, outputs,
//! input offsets and the marker in one Kafka transaction. The protocol is
//! described in [`crate::txn`]; this is its one implementation, so the
//! runtime's commit goes task -> Kafka layer and back, once.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use strata_state::{InputOffset, Offset, Partition};

use crate::OutRecord;
use crate::changelog::KafkaChangelogWriter;
use crate::client::KafkaConfig;
use crate::error::{Error, Result};
use crate::group::Group;
use crate::output::OutputProducer;
use crate::producer::AckedProducer;
use crate::txn::{MAX_EPOCH, TXN_HEADER, TxnId, TxnTag};

/// Fences every earlier producer of a task's transactional id: creates the
/// task's producer and registers it (the earlier producers' open
/// transaction is aborted, or completes if it was committing), so nothing
/// more of theirs lands and the committed offsets read next are final.
pub fn fence(config: &KafkaConfig, transactional_id: &str) -> Result<Arc<AckedProducer>> {
    let producer = AckedProducer::transactional(config, transactional_id)?;
    producer.init_transactions(config.request_timeout)?;
    tracing::debug!(transactional_id, "task producer initialized");
    Ok(producer)
}

/// Where a task's transactions stand in the group's committed offsets: the
/// last committed transaction (the marker of `partition` in
/// `marker_topic`, the tip) and the committed offsets of `inputs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// The last committed transaction, if any.
    pub tip: Option<TxnId>,
    /// Each input topic's committed offset (the ones that have one).
    pub offsets: Vec<(String, Offset)>,
}

/// Reads [`Committed`] for `partition`.
pub fn committed(
    group: &Group,
    marker_topic: &str,
    inputs: &[String],
    partition: Partition,
) -> Result<Committed> {
    let mut topics = inputs.to_vec();
    topics.push(marker_topic.to_string());
    let mut c = Committed::default();
    for (topic, at) in group.committed(&topics, partition)? {
        if topic == marker_topic {
            c.tip = TxnId::from_marker_offset(at.0 as i64);
        } else {
            c.offsets.push((topic, at));
        }
    }
    Ok(c)
}

/// A task's transactional producer and where its transactions stand.
pub struct TaskTxn {
    producer: Arc<AckedProducer>,
    /// This life of the task's producer.
    epoch: u32,
    /// The last transaction committed in this epoch (0: none yet).
    seq: u64,
    /// The last committed transaction when the epoch began.
    base: Option<TxnId>,
    /// A transaction is open: begun and neither committed nor abandoned.
    /// A commit that leaves it open failed, and the task must be reopened.
    open: bool,
    partition: Partition,
    marker_topic: String,
    timeout: Duration,
}

impl std::fmt::Debug for TaskTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTxn")
            .field("partition", &self.partition)
            .field("epoch", &self.epoch)
            .field("seq", &self.seq)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl TaskTxn {
    /// The task's transactions for a new epoch, one past the largest it
    /// found (`max_epoch_seen`, from its changelogs and the tip), with
    /// `base` the tip it opened on.
    pub fn new(
        producer: Arc<AckedProducer>,
        max_epoch_seen: u32,
        base: Option<TxnId>,
        partition: Partition,
        marker_topic: String,
        timeout: Duration,
    ) -> Result<TaskTxn> {
        let epoch = max_epoch_seen + 1;
        if epoch > MAX_EPOCH {
            return Err(Error::Stopped(format!(
                "task {partition} has used all {MAX_EPOCH} transaction epochs; reset the application's \
                 transactions topic offsets to reuse them"
            )));
        }
        tracing::info!(partition = %partition, epoch, tip = ?base.map(|t| t.to_string()), "task opened for exactly-once");
        Ok(TaskTxn {
            producer,
            epoch,
            seq: 0,
            base,
            open: false,
            partition,
            marker_topic,
            timeout,
        })
    }

    fn next(&self) -> TxnId {
        TxnId {
            epoch: self.epoch,
            seq: self.seq + 1,
        }
    }

    /// Whether a transaction is open (a commit left it so: the task must
    /// be reopened).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether another owner's producer fenced this one.
    pub fn fenced(&self) -> bool {
        self.producer.fenced()
    }

    /// Begins the next transaction: the epoch's first writes its fence to
    /// every changelog first; every writer tags its records with it.
    pub fn begin(&mut self, writers: &mut [KafkaChangelogWriter]) -> Result<()> {
        if self.open {
            return Err(Error::Stopped(format!(
                "task {}: a transaction whose outcome is unknown is still open; the task must be reopened",
                self.partition
            )));
        }
        self.producer.begin_transaction()?;
        self.open = true;
        let id = self.next();
        for w in writers.iter_mut() {
            if self.seq == 0 {
                w.set_tag(None);
                w.append_fence(TxnTag::Fence {
                    id,
                    base: self.base,
                })?;
            }
            w.set_tag(Some(TxnTag::Data(id)));
        }
        Ok(())
    }

    /// Sends outputs in the open transaction, tagged with it.
    pub fn produce(&self, outputs: &OutputProducer, records: &[OutRecord]) -> Result<()> {
        let tag = TxnTag::Data(self.next()).encode();
        self.producer.produce_outputs(
            records,
            &|logical| outputs.physical(logical).to_string(),
            Some((TXN_HEADER, &tag)),
        )
    }

    /// Commits the open transaction with the input `positions` and the
    /// marker offset.
    pub fn commit(&mut self, group: &Group, positions: &[InputOffset]) -> Result<()> {
        let id = self.next();
        let mut tpl = TopicPartitionList::with_capacity(positions.len() + 1);
        let p = self.partition.0 as i32;
        let add = |tpl: &mut TopicPartitionList, topic: &str, offset: i64| {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(offset))
                .map_err(|e| Error::kafka("building a transactional offset commit", e))
        };
        for i in positions {
            add(&mut tpl, &i.topic, i.next.0 as i64)?;
        }
        add(&mut tpl, &self.marker_topic, id.marker_offset())?;
        let meta = group.metadata()?;
        self.producer.send_offsets(&tpl, &meta, self.timeout)?;
        fail::fail_point!("txn-before-commit", |_| crash("txn-before-commit"));
        // A commit whose outcome is unknown, with the transaction left
        // open (tests/exactly_once_unknown.rs).
        fail::fail_point!("txn-commit-unknown-open", |_| Err(Error::OutcomeUnknown {
            context: "failpoint txn-commit-unknown-open: the commit was never sent".into(),
            timeout_ms: 0,
        }));
        self.producer.commit_transaction(self.timeout)?;
        // ... or committed, but reported unknown.
        fail::fail_point!("txn-commit-unknown-committed", |_| Err(
            Error::OutcomeUnknown {
                context: "failpoint txn-commit-unknown-committed: the commit went through".into(),
                timeout_ms: 0,
            }
        ));
        self.seq = id.seq;
        self.open = false;
        Ok(())
    }
}

/// Ends the process at a failpoint (tests of crash recovery only).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn crash(point: &str) -> ! {
    eprintln!("failpoint {point}: aborting the process");
    std::process::abort()
}
