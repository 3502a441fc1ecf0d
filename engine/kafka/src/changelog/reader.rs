//! Reads a table partition's changelog partition for restores (see the
//! invariants in the parent module).

use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use strata_state::changelog::ChangelogBatch;
use strata_state::{ChangeRecord, ChangelogReader, Location, Offset};

use super::to_state;
use crate::client::{KafkaConfig, TracingContext, create};
use crate::error::{Error, Result};
use crate::txn::{TXN_HEADER, TxnFilter, TxnId, TxnTag};

/// Largest batch a read pre-allocates for, whatever `max` says.
const MAX_PREALLOC: usize = 16_384;

/// Reads a table partition's changelog partition, for restores.
pub struct KafkaChangelogReader {
    consumer: BaseConsumer<TracingContext>,
    topic: String,
    location: Location,
    read_timeout: Duration,
    /// The offset the consumer will deliver next, when assigned.
    next: Option<u64>,
    /// Whether the consumer reported EOF at `next` (librdkafka reports it
    /// once per reach, so a later read re-assigns to learn it again).
    at_end: bool,
    /// Whether the partition was seen in the topic's metadata.
    exists: bool,
    /// Keeps committed transactions' records only.
    filter: TxnFilter<(Offset, ChangeRecord)>,
    /// The last committed transaction of the task (its marker), which
    /// resolves what the filter still holds at the end.
    tip: Option<TxnId>,
    /// Where the log is read next (the caller's `from` trails it while
    /// the filter holds records).
    raw_next: Option<u64>,
    /// The committed record the read resumes after: read for its tag only.
    resume_at: Option<u64>,
    /// The `from` the next read continues with; another starts afresh.
    expected: Option<u64>,
    /// Epochs seen and records dropped by earlier filters of this reader.
    seen_before: (u32, u64),
}

impl std::fmt::Debug for KafkaChangelogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaChangelogReader")
            .field("topic", &self.topic)
            .field("location", &self.location)
            .field("next", &self.next)
            .field("at_end", &self.at_end)
            .finish_non_exhaustive()
    }
}

impl KafkaChangelogReader {
    /// A reader of partition `location.partition` of `topic`. It connects
    /// lazily, on the first read.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration; [`Error::Kafka`] if
    /// librdkafka cannot create the consumer.
    pub fn new(
        config: &KafkaConfig,
        topic: impl Into<String>,
        location: Location,
    ) -> Result<KafkaChangelogReader> {
        let consumer = create(
            &config.restore_consumer()?,
            TracingContext,
            "changelog reader",
        )?;
        Ok(KafkaChangelogReader {
            consumer,
            topic: topic.into(),
            location,
            read_timeout: config.read_timeout,
            next: None,
            at_end: false,
            exists: false,
            filter: TxnFilter::new(),
            tip: None,
            raw_next: None,
            resume_at: None,
            expected: None,
            seen_before: (0, 0),
        })
    }

    /// Resolves, at the end of the log, the transactions still in doubt
    /// against `tip`: the task's last committed transaction (exactly-once;
    /// see [`crate::kafka::txn`]). Without it, records of transactions not
    /// known to have committed are dropped.
    pub fn with_tip(mut self, tip: Option<TxnId>) -> KafkaChangelogReader {
        self.tip = tip;
        self
    }

    /// The newest transaction epoch seen, and the records dropped as
    /// aborted so far.
    pub fn txn_seen(&self) -> (u32, u64) {
        (
            self.seen_before.0.max(self.filter.max_epoch()),
            self.seen_before.1 + self.filter.dropped(),
        )
    }

    /// The changelog topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.location.partition.0 as i32
    }

    /// Fails promptly if the partition does not exist: librdkafka would
    /// otherwise wait silently for it to appear, and a read would only fail
    /// after the read timeout.
    fn check_exists(&mut self) -> Result<()> {
        if self.exists {
            return Ok(());
        }
        let (topic, partition) = (self.topic.as_str(), self.partition());
        let md = self
            .consumer
            .fetch_metadata(Some(topic), self.read_timeout)
            .map_err(|e| Error::kafka(format!("reading metadata of changelog topic {topic}"), e))?;
        let count = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if usize::try_from(partition).map_or(true, |p| p >= count) {
            return Err(Error::kafka(
                format!(
                    "changelog topic {topic} has no partition {partition} (it has {count}); \
                     create changelog topics before restoring"
                ),
                KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
            ));
        }
        self.exists = true;
        Ok(())
    }

    /// Points the consumer at `from`.
    fn assign(&mut self, from: u64) -> Result<()> {
        self.check_exists()?;
        let (topic, partition) = (self.topic.as_str(), self.partition());
        let context = || format!("assigning {topic}[{partition}] at offset {from}");
        let at = i64::try_from(from)
            .map_err(|_| Error::config("changelog offset", format!("{from} is beyond i64")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(at))
            .map_err(|e| Error::kafka(context(), e))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka(context(), e))?;
        self.next = Some(from);
        self.at_end = false;
        Ok(())
    }

    /// Reads on from where the last read stopped and keeps only the
    /// records of committed transactions ([`TxnFilter`]); returns once it
    /// has some, or at the end of the log.
    fn try_read(&mut self, from: Offset, max: usize) -> Result<ChangelogBatch> {
        if self.expected != Some(from.0) {
            // A new read (the first, or one the caller moved, or after the
            // end or an error): the record before `from` (the checkpoint's)
            // committed, and its tag tells a fresh filter which epoch is
            // current.
            self.seen_before = self.txn_seen();
            self.filter = TxnFilter::new();
            self.raw_next = Some(from.0.saturating_sub(1));
            self.resume_at = from.0.checked_sub(1);
        }
        let r = self.read_filtered(from, max);
        self.expected = match &r {
            Ok(b) if !b.end => Some(b.records.last().map_or(from.0, |(o, _)| o.0 + 1)),
            _ => None,
        };
        r.map_err(|e| match (e, self.resume_at) {
            // The record before `from` could not be read.
            (Error::Kafka { context, source }, Some(_)) => Error::Kafka {
                context: format!(
                    "{context} (the record before offset {}, read first)",
                    from.0
                ),
                source,
            },
            (e, _) => e,
        })
    }

    fn read_filtered(&mut self, from: Offset, max: usize) -> Result<ChangelogBatch> {
        let mut out = Vec::new();
        loop {
            let start = Offset(self.raw_next.unwrap_or(from.0));
            let (raw, end) = self.read_raw(start, max)?;
            for (offset, tag, record) in raw {
                self.raw_next = Some(offset.0 + 1);
                if self.resume_at == Some(offset.0) {
                    self.resume_at = None;
                    self.filter.resume_after(tag);
                    continue;
                }
                self.filter.push(record.map(|r| (offset, r)), tag, &mut out);
            }
            if end {
                let held = self.filter.held();
                self.filter.finish(self.tip, &mut out);
                if self.filter.dropped() > 0 || held > 0 {
                    tracing::info!(
                        topic = %self.topic, partition = self.partition(), tip = ?self.tip.map(|t| t.to_string()),
                        dropped = self.filter.dropped(), "restore skipped the records of aborted transactions"
                    );
                }
                return Ok(ChangelogBatch {
                    records: out,
                    end: true,
                });
            }
            if !out.is_empty() {
                return Ok(ChangelogBatch {
                    records: out,
                    end: false,
                });
            }
        }
    }

    /// One read of the log as written: each record with its transaction
    /// tag (fences have no record), and whether the end was reached.
    #[allow(clippy::type_complexity)]
    fn read_raw(
        &mut self,
        from: Offset,
        max: usize,
    ) -> Result<(Vec<(Offset, Option<TxnTag>, Option<ChangeRecord>)>, bool)> {
        if self.next != Some(from.0) || self.at_end {
            self.assign(from.0)?;
        }
        let (partition, max) = (self.partition(), max.max(1));
        let deadline = Instant::now() + self.read_timeout;
        let mut records = Vec::with_capacity(max.min(MAX_PREALLOC));
        let mut next = from.0;
        while records.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left) {
                None => {}
                Some(Ok(m)) => {
                    if m.partition() != partition || m.topic() != self.topic {
                        continue;
                    }
                    let Ok(offset) = u64::try_from(m.offset()) else {
                        continue;
                    };
                    if offset < next {
                        // Left over from before a re-assignment.
                        continue;
                    }
                    let decode = || -> std::result::Result<(Option<TxnTag>, Option<ChangeRecord>), String> {
                        let tag = match m
                            .headers()
                            .and_then(|h| h.iter().find(|h| h.key == TXN_HEADER))
                        {
                            Some(h) => Some(TxnTag::decode(h.value.unwrap_or_default())?),
                            None => None,
                        };
                        if matches!(tag, Some(TxnTag::Fence { .. })) {
                            return Ok((tag, None));
                        }
                        let key = m.key().ok_or("the record has no key")?;
                        let value = m.payload().ok_or(
                            "the record has no value (a tombstone; changelogs never hold any)",
                        )?;
                        Ok((tag, Some(ChangeRecord::decode(key, value)?)))
                    };
                    match decode() {
                        Ok((tag, r)) => records.push((Offset(offset), tag, r)),
                        Err(reason) => {
                            return Err(Error::Poison {
                                topic: self.topic.clone(),
                                partition,
                                offset: offset as i64,
                                reason: format!("undecodable changelog record: {reason}"),
                            });
                        }
                    }
                    next = offset + 1;
                    self.next = Some(next);
                }
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => {
                    self.at_end = true;
                    break;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(KafkaError::MessageConsumption(
                    code @ (RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange),
                ))) => {
                    return Err(Error::kafka(
                        format!(
                            "reading {}[{partition}] at offset {next}: the offset is outside the log (its start was \
                             deleted by retention, or the topic was recreated or lost data); local state cannot be \
                             caught up from this changelog: rebuild the table partition",
                            self.topic
                        ),
                        KafkaError::MessageConsumption(code),
                    ));
                }
                Some(Err(e)) => {
                    return Err(Error::kafka(
                        format!("reading {}[{partition}] at offset {next}", self.topic),
                        e,
                    ));
                }
            }
        }
        if records.is_empty() && !self.at_end {
            return Err(Error::kafka(
                format!(
                    "reading {}[{partition}] at offset {next}: neither a record nor the end of the partition \
                     arrived within {} ms (is the broker reachable? is the offset beyond the log's end?)",
                    self.topic,
                    self.read_timeout.as_millis()
                ),
                KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
            ));
        }
        Ok((records, self.at_end))
    }
}

impl ChangelogReader for KafkaChangelogReader {
    /// The listed high watermark: for progress estimates only (Tansu lists
    /// the last batch's base offset + 1, so the true end comes by EOF).
    fn end_estimate(&mut self) -> Option<Offset> {
        let p = self.location.partition.0 as i32;
        self.consumer
            .fetch_watermarks(&self.topic, p, self.read_timeout)
            .ok()
            .map(|(_, high)| Offset(high.max(0) as u64))
    }

    fn read(&mut self, from: Offset, max: usize) -> strata_state::Result<ChangelogBatch> {
        match self.try_read(from, max) {
            Ok(b) => {
                tracing::trace!(topic = %self.topic, partition = self.partition(), from = from.0, records = b.records.len(), end = b.end, "read changelog");
                Ok(b)
            }
            Err(e) => Err(to_state(&self.location, e)),
        }
    }
}
