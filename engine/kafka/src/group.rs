//! The consumer group: one thread polls the group consumer (which serves
//! rebalances and heartbeats); what happens is reported as
//! [`GroupEvents`] to the layer above, which owns the tasks.
//!
//! Rebalance callbacks do no slow work: a revocation asks the layer above
//! to release the partitions and waits for it; an assignment splits each
//! partition's queue off the consumer right in the callback, before its
//! first fetch can deliver anything, and hands it over. A record that
//! reached the main queue anyway is handed over as a stray, so nothing is
//! lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};
use strata_state::{Offset, Partition};

use crate::client::{KafkaConfig, create, log_to_tracing};
use crate::error::{Error, Result};

/// What the group consumer reports to the layer above it (the runtime),
/// which decides what each event means for its workers and tasks. Called
/// on the poll thread, inside librdkafka's rebalance callbacks: handlers
/// do no slow work but what a rebalance must wait for.
pub trait GroupEvents: Send + Sync + 'static {
    /// These partitions are being revoked: release them (commit, close)
    /// before returning. The rebalance waits for this call, which bounds
    /// its own wait (the runtime's revoke timeout).
    fn revoked(&self, partitions: &[(String, Partition)]);
    /// A partition was assigned; `queue` delivers its records (split off
    /// the consumer before its first fetch could deliver anything).
    fn assigned(&self, topic: Arc<str>, partition: Partition, queue: InputQueue);
    /// A record that reached the consumer's main queue (fetched before its
    /// partition's queue was split off). An error stops the poll loop.
    fn stray(&self, record: InputRecord) -> Result<()>;
    /// A partition's consumer lag, from librdkafka's statistics (fetch
    /// path, not ListOffsets).
    fn lag(&self, topic: &str, partition: Partition, lag: u64);
}

/// How the group consumer is set up beyond [`KafkaConfig`].
#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// The consumer group (the application id).
    pub group_id: String,
    /// Where a partition without a committed offset starts: the earliest
    /// record, or the end.
    pub start_earliest: bool,
    /// Assign with the range assignor, so co-partitioned topics land on the
    /// same member (every member gets the same partition numbers of each
    /// topic); needed when more than one topic is subscribed.
    pub co_partitioned: bool,
    /// Static membership (`group.instance.id`).
    pub instance_id: Option<String>,
}

/// The group consumer's context: relays rebalances and statistics.
pub struct GroupContext {
    events: Arc<dyn GroupEvents>,
    /// The consumer itself, to split partition queues in the assignment
    /// callback (set right after creation; weak, so no cycle).
    consumer: std::sync::OnceLock<std::sync::Weak<BaseConsumer<GroupContext>>>,
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

    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.events
                        .lag(topic, Partition(*p as u32), s.consumer_lag as u64);
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
                let parts: Vec<(String, Partition)> = parts
                    .into_iter()
                    .map(|(t, p)| (t, Partition(p.max(0) as u32)))
                    .collect();
                self.events.revoked(&parts);
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
            for (topic, p) in parts {
                let Some(queue) = consumer.split_partition_queue(&topic, p) else {
                    tracing::error!(%topic, partition = p, "cannot split the partition's queue");
                    continue;
                };
                self.events.assigned(
                    Arc::from(topic.as_str()),
                    Partition(p.max(0) as u32),
                    InputQueue(queue),
                );
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

/// One assigned partition's own queue of input records.
pub struct InputQueue(PartitionQueue<GroupContext>);

impl InputQueue {
    /// The next fetched record, if one is waiting (never blocks). An error
    /// is the queue's (logged by the caller; the next poll goes on).
    pub fn poll(&self) -> Option<Result<Input<'_>>> {
        self.0.poll(Duration::ZERO).map(|r| {
            r.map(Input)
                .map_err(|e| Error::kafka("polling a partition queue", e))
        })
    }
}

/// An input record as fetched, borrowed from the consumer.
pub struct Input<'a>(BorrowedMessage<'a>);

/// An input record that reached the consumer's main queue, owned.
#[derive(Debug)]
pub struct InputRecord(OwnedMessage);

macro_rules! record_accessors {
    () => {
        /// The physical topic.
        pub fn topic(&self) -> &str {
            self.0.topic()
        }
        /// The partition.
        pub fn partition(&self) -> Partition {
            Partition(self.0.partition().max(0) as u32)
        }
        /// The offset.
        pub fn offset(&self) -> Offset {
            Offset(self.0.offset().max(0) as u64)
        }
        /// The record's timestamp (ms since the epoch), if it has one.
        pub fn timestamp(&self) -> Option<i64> {
            self.0.timestamp().to_millis()
        }
        /// The key bytes.
        pub fn key(&self) -> Option<&[u8]> {
            self.0.key()
        }
        /// The value bytes.
        pub fn value(&self) -> Option<&[u8]> {
            self.0.payload()
        }
    };
}

impl Input<'_> {
    record_accessors!();
}

impl InputRecord {
    record_accessors!();
}

/// The application's group consumer: subscribed to the input topics,
/// polled by one thread (which serves rebalances and heartbeats), shared
/// with the workers, which commit offsets, seek and read positions.
#[derive(Clone)]
pub struct Group {
    consumer: Arc<BaseConsumer<GroupContext>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

/// Why the poll loop returned.
#[derive(Debug, PartialEq, Eq)]
pub enum PollEnd {
    /// `stop` was set.
    Stopped,
    /// `halt` said so (the layer above failed).
    Halted,
}

impl Group {
    /// Creates the consumer (every setting of the group consumer is here:
    /// [`KafkaConfig`]'s and `options`') and subscribes it to `topics`.
    pub fn join(
        config: &KafkaConfig,
        options: &GroupOptions,
        topics: &[String],
        events: Arc<dyn GroupEvents>,
    ) -> Result<Group> {
        let mut cc = config.group_consumer(&options.group_id, false)?;
        cc.set(
            "auto.offset.reset",
            if options.start_earliest {
                "earliest"
            } else {
                "latest"
            },
        );
        if options.co_partitioned {
            cc.set("partition.assignment.strategy", "range");
        }
        if let Some(id) = &options.instance_id {
            cc.set("group.instance.id", id);
        }
        // Lag comes from librdkafka's statistics.
        cc.set("statistics.interval.ms", "1000");
        let context = GroupContext {
            events,
            consumer: std::sync::OnceLock::new(),
        };
        let consumer: Arc<BaseConsumer<GroupContext>> =
            Arc::new(create(&cc, context, "group consumer")?);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| Error::kafka("subscribing to input topics", e))?;
        Ok(Group {
            consumer,
            request_timeout: config.request_timeout,
        })
    }

    /// Polls until `stop` is set or `halt` returns true (checked before
    /// each poll). Records fetched before their partition's queue was split
    /// off go to [`GroupEvents::stray`].
    pub fn poll_until(&self, stop: &AtomicBool, halt: impl Fn() -> bool) -> Result<PollEnd> {
        while !stop.load(Ordering::Acquire) {
            if halt() {
                return Ok(PollEnd::Halted);
            }
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => self
                    .consumer
                    .context()
                    .events
                    .stray(InputRecord(m.detach()))?,
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {}
            }
        }
        Ok(PollEnd::Stopped)
    }

    /// Commits input positions (one past the last processed record):
    /// asynchronously on the hot path (a failure is logged by the commit
    /// callback and covered by the next commit), synchronously when a task
    /// is released, so the next owner starts exactly after it.
    pub fn commit_positions(
        &self,
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
        self.consumer
            .commit(&tpl, mode)
            .map_err(|e| Error::kafka("committing offsets", e))
    }

    /// Points the consumer's fetch position of `topic`/`partition` at
    /// `offset`. librdkafka drops what it fetched before the seek.
    pub fn seek(&self, topic: &str, partition: Partition, offset: Offset) -> Result<()> {
        self.consumer
            .seek(
                topic,
                partition.0 as i32,
                rdkafka::Offset::Offset(offset.0 as i64),
                self.request_timeout,
            )
            .map_err(|e| Error::kafka(format!("seeking {topic}[{partition}] to {}", offset.0), e))
    }

    /// The group's committed offsets of `partition` of each of `topics`:
    /// the ones that have one.
    pub fn committed(
        &self,
        topics: &[String],
        partition: Partition,
    ) -> Result<Vec<(String, Offset)>> {
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            tpl.add_partition(t, partition.0 as i32);
        }
        let list = self
            .consumer
            .committed_offsets(tpl, self.request_timeout)
            .map_err(|e| {
                Error::kafka(
                    format!("reading the committed offsets of partition {partition} of {topics:?}"),
                    e,
                )
            })?;
        Ok(list
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(n) if n >= 0 => {
                    Some((e.topic().to_string(), Offset(n as u64)))
                }
                _ => None,
            })
            .collect())
    }

    /// The earliest offset `topic`/`partition` still holds.
    pub fn low_watermark(&self, topic: &str, partition: Partition) -> Result<Offset> {
        let (low, _) = self
            .consumer
            .fetch_watermarks(topic, partition.0 as i32, self.request_timeout)
            .map_err(|e| {
                Error::kafka(format!("reading the offsets {topic}/{partition} holds"), e)
            })?;
        Ok(Offset(low.max(0) as u64))
    }

    /// The group's metadata, for a transactional offset commit.
    pub(crate) fn metadata(&self) -> Result<rdkafka::consumer::ConsumerGroupMetadata> {
        self.consumer.group_metadata().ok_or_else(|| {
            Error::Stopped(
                "the group consumer has no group metadata for a transactional offset commit".into(),
            )
        })
    }
}
