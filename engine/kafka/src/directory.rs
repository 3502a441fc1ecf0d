//! The owner directory's Kafka clients: a reader that follows partition 0
//! of the directory topic from its start, and a writer that announces one
//! member under its key. What the records mean (announcements, members,
//! expiry) is the engine's; here they are keys and bytes.
//!
//! Broker notes: the first partition EOF marks the reader caught up (the
//! fetch path's EOF is right on Tansu, whose ListOffsets is not, so no end
//! offset is ever asked for); reading starts at offset 0 and falls back to
//! the earliest offset if compaction or retention removed it. Writes are
//! asynchronous and idempotent, so one member's records stay in order and
//! its tombstone is its last record; a failed delivery is remembered for
//! [`DirectoryWriter::take_failed`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::client::{KafkaConfig, TracingContext, create, log_to_tracing};
use crate::error::{Error, Result};

/// What one poll of the directory reader saw.
#[derive(Debug, PartialEq, Eq)]
pub enum DirectoryRead {
    /// A record: the member's key (if any) and its value (`None`: a
    /// tombstone).
    Record {
        /// The record's offset.
        offset: i64,
        /// The key bytes.
        key: Option<Vec<u8>>,
        /// The value bytes.
        value: Option<Vec<u8>>,
    },
    /// The reader reached the end of what the topic holds.
    End,
}

/// Follows partition 0 of the directory topic: an assign-only consumer (no
/// group joined, nothing committed).
pub struct DirectoryReader {
    consumer: BaseConsumer<TracingContext>,
    topic: String,
}

impl DirectoryReader {
    /// A reader of `topic` from offset 0.
    pub fn new(config: &KafkaConfig, topic: &str) -> Result<DirectoryReader> {
        let prefix = &config.client_id_prefix;
        let mut c = config.restore_consumer()?;
        // A nominal group (librdkafka's assign needs one); never joined.
        c.set("client.id", format!("{prefix}-directory"))
            .set("group.id", format!("{prefix}-directory"))
            .set("auto.offset.reset", "earliest")
            // An idle reader's fetch returns within this, so changes
            // arrive within about this long after they are produced.
            .set("fetch.wait.max.ms", "250");
        let consumer: BaseConsumer<TracingContext> =
            create(&c, TracingContext, "owner directory reader")?;
        let mut tpl = TopicPartitionList::new();
        let context = || format!("assigning {topic}[0] to the owner directory reader");
        tpl.add_partition_offset(topic, 0, Offset::Offset(0))
            .map_err(|e| Error::kafka(context(), e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka(context(), e))?;
        Ok(DirectoryReader {
            consumer,
            topic: topic.to_string(),
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Waits up to `timeout` for a record or the end; `None` if neither
    /// came.
    pub fn poll(&self, timeout: Duration) -> Option<Result<DirectoryRead>> {
        match self.consumer.poll(timeout)? {
            Ok(m) => Some(Ok(DirectoryRead::Record {
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
            })),
            Err(KafkaError::PartitionEOF(_)) => Some(Ok(DirectoryRead::End)),
            Err(e) => Some(Err(Error::kafka(
                format!("reading the owner directory {}", self.topic),
                e,
            ))),
        }
    }
}

/// The writer's context: notes failed deliveries.
struct WriterContext {
    failed: AtomicBool,
}

impl ClientContext for WriterContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        log_to_tracing(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "owner directory producer error");
    }
}

impl ProducerContext for WriterContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.store(true, Ordering::Release);
            tracing::warn!(%error, "an owner directory announcement was not delivered; publishing again");
        }
    }
}

/// Announces one member (its key) to partition 0 of the directory topic.
pub struct DirectoryWriter {
    producer: BaseProducer<WriterContext>,
    topic: String,
    member: String,
}

impl DirectoryWriter {
    /// A writer of `member`'s records to `topic`.
    pub fn new(config: &KafkaConfig, topic: &str, member: &str) -> Result<DirectoryWriter> {
        let mut c = config.producer()?;
        c.set(
            "client.id",
            format!("{}-directory", config.client_id_prefix),
        );
        let producer = create(
            &c,
            WriterContext {
                failed: AtomicBool::new(false),
            },
            "owner directory producer",
        )?;
        Ok(DirectoryWriter {
            producer,
            topic: topic.to_string(),
            member: member.to_string(),
        })
    }

    /// Enqueues `value` (or, with `None`, a tombstone) under the member's
    /// key.
    pub fn send(&self, value: Option<&[u8]>) -> Result<()> {
        let mut record = BaseRecord::<str, [u8]>::to(&self.topic)
            .key(self.member.as_str())
            .partition(0);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer
            .send(record)
            .map_err(|(e, _)| Error::kafka(format!("producing to {}", self.topic), e))
    }

    /// Whether a delivery failed since the last call.
    pub fn take_failed(&self) -> bool {
        self.producer.context().failed.swap(false, Ordering::AcqRel)
    }

    /// Serves delivery reports (never blocks).
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits up to `timeout` for everything sent: `Ok(true)` when all of
    /// it was delivered, `Ok(false)` when a delivery failed.
    pub fn flush(&self, timeout: Duration) -> Result<bool> {
        match self.producer.flush(timeout) {
            Ok(()) => Ok(!self.producer.context().failed.load(Ordering::Acquire)),
            Err(_) => Err(Error::OutcomeUnknown {
                context: "flushing the owner directory producer".into(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}
