//! A table partition's changelog over Kafka: [`KafkaChangelogWriter`] and
//! [`KafkaChangelogReader`] implement `strata_state`'s changelog traits for
//! one partition of a changelog topic (changelog partition N holds table
//! partition N).
//!
//! A record's key is the user key and its value is the
//! [`ChangeRecord::encode_value`] bytes (version, time, flags, lineage,
//! value, CRC). Deletions are ordinary records, never tombstones.
//!
//! Invariants:
//! - An append returns offsets only when every record was acknowledged
//!   (`acks=all`, idempotent producer, so offsets follow record order: the
//!   acknowledged offsets, sorted, are the records' offsets in order,
//!   whatever order the reports arrive in). A wait that expires, or a
//!   record that timed out in the producer, is [`Error::OutcomeUnknown`]
//!   (the records may have landed): the table partition must then restore
//!   before committing again.
//! - Delivery is counted per append, not tracked per record: each record
//!   carries a reference to its append's [`AppendAcks`], so sending a
//!   record allocates nothing and a report is a short locked update.
//! - A read finds the partition's end by the fetch path's EOF, never by the
//!   listed high watermark, which some brokers (Tansu) report wrongly. A
//!   read never returns an empty batch that is not the end: waiting longer
//!   than [`KafkaConfig::read_timeout`] for either is an error.
//! - A read from an offset outside the log fails: Kafka brokers answer
//!   OFFSET_OUT_OF_RANGE, which surfaces at once (`auto.offset.reset` is
//!   `error`). Tansu instead answers an empty fetch with the true high
//!   watermark and no error, so there the read fails after the read
//!   timeout, with a message that names this possibility.
//! - A missing topic or partition fails on the first read, from metadata,
//!   rather than restoring nothing.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use strata_state::{ChangeRecord, ChangelogWriter, Location, Offset};

use crate::error::{Error, Result};
use crate::producer::{AckedProducer, AppendAcks, QUEUE_FULL_BACKOFF};
use crate::txn::{TXN_HEADER, TxnTag};

mod reader;

pub use reader::KafkaChangelogReader;

/// Appends a table partition's commits to its changelog partition.
#[derive(Debug)]
pub struct KafkaChangelogWriter {
    producer: Arc<AckedProducer>,
    topic: String,
    location: Location,
    /// Under exactly-once: the open transaction's tag, sent as the
    /// [`TXN_HEADER`] of every record.
    tag: Option<Vec<u8>>,
}

impl KafkaChangelogWriter {
    /// A writer of `location`'s records to partition `location.partition`
    /// of `topic`, through the shared `producer`.
    pub fn new(
        producer: Arc<AckedProducer>,
        topic: impl Into<String>,
        location: Location,
    ) -> KafkaChangelogWriter {
        KafkaChangelogWriter {
            producer,
            topic: topic.into(),
            location,
            tag: None,
        }
    }

    /// Tags every record appended from now on with `tag` (exactly-once:
    /// the open transaction), or nothing.
    pub fn set_tag(&mut self, tag: Option<TxnTag>) {
        self.tag = tag.map(|t| t.encode());
    }

    /// Appends an epoch's fence record (empty key and value, the fence tag
    /// as [`TXN_HEADER`]) and waits for its acknowledgement.
    pub fn append_fence(&mut self, fence: TxnTag) -> Result<()> {
        let (topic, partition) = (self.topic.as_str(), self.partition());
        let what = format!("appending a transaction fence to {topic}[{partition}]");
        let value = fence.encode();
        let acks = Arc::new(AppendAcks::new(1));
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: TXN_HEADER,
            value: Some(value.as_slice()),
        });
        let record = BaseRecord::<[u8], [u8], Arc<AppendAcks>>::with_opaque_to(topic, acks.clone())
            .partition(partition)
            .key(&[])
            .payload(&[])
            .headers(headers);
        self.producer
            .inner
            .send(record)
            .map_err(|(e, _)| Error::kafka(what.clone(), e))?;
        self.producer.delivered(&acks, &what).map(drop)
    }

    /// The changelog topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.location.partition.0 as i32
    }

    /// The append, with the engine's error. `payloads[i]` is the encoded
    /// value of `records[i]`.
    fn try_append(&self, records: &[ChangeRecord], payloads: &[Vec<u8>]) -> Result<Vec<Offset>> {
        let (topic, partition) = (self.topic.as_str(), self.partition());
        let what = || {
            format!(
                "appending {} records to {topic}[{partition}]",
                records.len()
            )
        };
        if payloads.len() != records.len() {
            return Err(Error::kafka(
                format!("{}: {} payloads given", what(), payloads.len()),
                KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument),
            ));
        }
        let acks = Arc::new(AppendAcks::new(records.len()));
        let enqueue_deadline = Instant::now() + self.producer.delivery_timeout;
        for (index, (r, payload)) in records.iter().zip(payloads).enumerate() {
            let mut record = BaseRecord::with_opaque_to(topic, acks.clone())
                .partition(partition)
                .key(r.key.as_slice())
                .payload(payload.as_slice());
            if let Some(tag) = &self.tag {
                record = record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: TXN_HEADER,
                    value: Some(tag.as_slice()),
                }));
            }
            loop {
                match self.producer.inner.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if Instant::now() >= enqueue_deadline {
                            return Err(Error::OutcomeUnknown {
                                context: format!(
                                    "{}: the producer queue stayed full; {index} records were sent",
                                    what()
                                ),
                                timeout_ms: self.producer.delivery_timeout.as_millis() as u64,
                            });
                        }
                        record = back;
                        std::thread::sleep(QUEUE_FULL_BACKOFF);
                    }
                    Err((e, _)) if index == 0 => return Err(Error::kafka(what(), e)),
                    // Earlier records were sent and may land.
                    Err((e, _)) => {
                        return Err(Error::kafka(
                            format!("{}: record {index} refused, earlier ones may land", what()),
                            e,
                        ));
                    }
                }
            }
        }

        let landed = self.producer.delivered(&acks, &what())?;
        if let Some((p, offset)) = landed
            .iter()
            .copied()
            .find(|&(p, o)| p != partition || o < 0)
        {
            return Err(Error::kafka(
                format!("{}: a record was acknowledged at {p}@{offset}", what()),
                KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
            ));
        }
        // The idempotent producer keeps a partition's records in order, so
        // the sorted offsets are the records' offsets, in record order.
        let mut offsets: Vec<Offset> = landed.into_iter().map(|(_, o)| Offset(o as u64)).collect();
        offsets.sort_unstable();
        if offsets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::kafka(
                format!(
                    "{}: the broker acknowledged two records at the same offset",
                    what()
                ),
                KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
            ));
        }
        Ok(offsets)
    }
}

impl ChangelogWriter for KafkaChangelogWriter {
    fn append(&mut self, records: &[ChangeRecord]) -> strata_state::Result<Vec<Offset>> {
        let payloads: Vec<Vec<u8>> = records.iter().map(ChangeRecord::encode_value).collect();
        self.append_encoded(records, &payloads)
    }

    fn append_encoded(
        &mut self,
        records: &[ChangeRecord],
        payloads: &[Vec<u8>],
    ) -> strata_state::Result<Vec<Offset>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        match self.try_append(records, payloads) {
            Ok(offsets) => {
                tracing::debug!(
                    topic = %self.topic,
                    partition = self.partition(),
                    records = records.len(),
                    first = offsets.first().map(|o| o.0),
                    last = offsets.last().map(|o| o.0),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "appended to changelog"
                );
                Ok(offsets)
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.partition(), records = records.len(), error = %e, "changelog append failed");
                Err(to_state(&self.location, e))
            }
        }
    }
}

/// Whether a changelog error from this module means "the append may or may
/// not have landed" (as opposed to a definite failure).
pub fn is_outcome_unknown(e: &strata_state::Error) -> bool {
    match e {
        strata_state::Error::Changelog {
            source: Some(s), ..
        } => {
            matches!(
                s.downcast_ref::<Error>(),
                Some(Error::OutcomeUnknown { .. })
            )
        }
        _ => false,
    }
}

/// Wraps an engine error for the `state` traits, keeping it as the source.
fn to_state(location: &Location, e: Error) -> strata_state::Error {
    strata_state::Error::Changelog {
        location: Box::new(location.clone()),
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}
