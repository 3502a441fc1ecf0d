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

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, TopicPartitionList};
use strata_state::changelog::ChangelogBatch;
use strata_state::{ChangeRecord, ChangelogReader, ChangelogWriter, Location, Offset};

use rdkafka::message::{Header, Headers, OwnedHeaders};

use super::client::{KafkaConfig, TracingContext, create, log_to_tracing};
use super::txn::{TXN_HEADER, TxnFilter, TxnId, TxnTag};
use crate::Error;

/// How long `append` sleeps before retrying a record the producer's full
/// local queue refused.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);
/// Slack added to librdkafka's delivery timeout when waiting for delivery
/// reports, so librdkafka's own (more precise) timeout report comes first.
const DELIVERY_GRACE: Duration = Duration::from_secs(1);
/// Largest batch a read pre-allocates for, whatever `max` says.
const MAX_PREALLOC: usize = 16_384;

/// The delivery reports of one append, counted as they arrive.
pub(crate) struct AppendAcks {
    /// Records the append sends.
    expected: usize,
    // A lock rather than a channel: the delivery thread hands over one
    // report per record, and a short locked update costs less than a
    // channel message; the append sleeps on the condvar and is woken once,
    // when the last report arrives.
    state: Mutex<Acks>,
    complete: Condvar,
}

#[derive(Default)]
struct Acks {
    /// Reports received, successful or not.
    received: usize,
    /// Where the acknowledged records landed, in arrival order.
    landed: Vec<(i32, i64)>,
    /// Records that failed, and the first failure to arrive.
    failed: usize,
    first_error: Option<KafkaError>,
    /// Whether a failure was a timeout (the record may have landed).
    timed_out: bool,
}

impl AppendAcks {
    fn new(expected: usize) -> AppendAcks {
        AppendAcks {
            expected,
            state: Mutex::new(Acks {
                landed: Vec::with_capacity(expected),
                ..Acks::default()
            }),
            complete: Condvar::new(),
        }
    }

    fn report(&self, report: std::result::Result<(i32, i64), KafkaError>) {
        // A poisoned lock means the append panicked: nobody waits any more.
        let Ok(mut acks) = self.state.lock() else {
            return;
        };
        acks.received += 1;
        match report {
            Ok(at) => acks.landed.push(at),
            Err(e) => {
                acks.failed += 1;
                if matches!(
                    e,
                    KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut
                    )
                ) {
                    acks.timed_out = true;
                }
                acks.first_error.get_or_insert(e);
            }
        }
        if acks.received == self.expected {
            self.complete.notify_all();
        }
    }

    /// Waits until every report arrived or `deadline` passed; the reports
    /// so far and whether they are all in.
    fn wait(&self, deadline: Instant) -> (Acks, bool) {
        let Ok(mut acks) = self.state.lock() else {
            return (Acks::default(), false);
        };
        while acks.received < self.expected {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            acks = match self.complete.wait_timeout(acks, left) {
                Ok((a, _)) => a,
                Err(_) => return (Acks::default(), false),
            };
        }
        let all = acks.received == self.expected;
        (std::mem::take(&mut *acks), all)
    }
}

/// The producer's context: routes each delivery report to its append.
pub(crate) struct DeliveryContext;

impl ClientContext for DeliveryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka producer error");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<AppendAcks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<AppendAcks>) {
        // The append may have given up waiting (its outcome was reported
        // unknown); then the report only updates counts nobody reads.
        acks.report(match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        });
    }
}

/// A producer shared by every changelog writer of the process (one
/// connection pool, one batching queue, one background delivery thread).
pub struct ChangelogProducer {
    inner: ThreadedProducer<DeliveryContext>,
    delivery_timeout: Duration,
}

impl std::fmt::Debug for ChangelogProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogProducer")
            .field("delivery_timeout", &self.delivery_timeout)
            .finish_non_exhaustive()
    }
}

impl ChangelogProducer {
    /// A producer for the cluster `config` names (`acks=all`, idempotent).
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration; [`Error::Kafka`] if
    /// librdkafka cannot create the producer.
    pub fn new(config: &KafkaConfig) -> crate::Result<Arc<ChangelogProducer>> {
        let inner = create(&config.producer()?, DeliveryContext, "changelog producer")?;
        Ok(Arc::new(ChangelogProducer {
            inner,
            delivery_timeout: config.delivery_timeout,
        }))
    }

    /// A producer of output records (`acks=all`, idempotent, keys
    /// partitioned with Kafka's default murmur2 partitioner).
    ///
    /// # Errors
    /// As [`ChangelogProducer::new`].
    pub fn for_outputs(config: &KafkaConfig) -> crate::Result<Arc<ChangelogProducer>> {
        let mut c = config.producer()?;
        c.set("partitioner", "murmur2_random");
        let inner = create(&c, DeliveryContext, "output producer")?;
        Ok(Arc::new(ChangelogProducer {
            inner,
            delivery_timeout: config.delivery_timeout,
        }))
    }

    /// Waits until everything sent has been acknowledged or failed, up to
    /// `timeout`.
    ///
    /// # Errors
    /// [`Error::OutcomeUnknown`] if records are still in flight at the end.
    pub fn flush(&self, timeout: Duration) -> crate::Result<()> {
        self.inner.flush(timeout).map_err(|e| match e {
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => Error::OutcomeUnknown {
                context: format!(
                    "flushing the changelog producer ({} records in flight)",
                    self.inner.in_flight_count()
                ),
                timeout_ms: timeout.as_millis() as u64,
            },
            e => Error::kafka("flushing the changelog producer", e),
        })
    }

    /// A task's transactional producer (exactly-once): transactional id
    /// `txn_id`, the murmur2 partitioner for outputs. Call
    /// [`ChangelogProducer::init_transactions`] before anything else.
    ///
    /// # Errors
    /// As [`ChangelogProducer::new`].
    pub fn transactional(
        config: &KafkaConfig,
        txn_id: &str,
    ) -> crate::Result<Arc<ChangelogProducer>> {
        let mut c = config.producer()?;
        c.set("transactional.id", txn_id)
            .set(
                "transaction.timeout.ms",
                ms(config.transaction_timeout.max(config.delivery_timeout)),
            )
            .set("partitioner", "murmur2_random");
        let inner = create(&c, DeliveryContext, "transactional producer")?;
        Ok(Arc::new(ChangelogProducer {
            inner,
            delivery_timeout: config.delivery_timeout,
        }))
    }

    /// Registers the transactional id with the broker: fences every earlier
    /// producer of the id and waits until their open transaction is
    /// aborted (or committed, if it was already committing).
    pub fn init_transactions(&self, timeout: Duration) -> crate::Result<()> {
        self.inner.init_transactions(timeout).map_err(|e| {
            txn_error(
                "initializing transactions (fencing earlier producers of the task)",
                e,
                timeout,
            )
        })
    }

    /// Begins a transaction.
    pub fn begin_transaction(&self) -> crate::Result<()> {
        self.inner
            .begin_transaction()
            .map_err(|e| Error::kafka("beginning a transaction", e))
    }

    /// Adds consumer offsets (`tpl`) of `group` to the open transaction.
    pub(crate) fn send_offsets(
        &self,
        tpl: &TopicPartitionList,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
        timeout: Duration,
    ) -> crate::Result<()> {
        self.inner
            .send_offsets_to_transaction(tpl, group, timeout)
            .map_err(|e| txn_error("sending offsets to the transaction", e, timeout))
    }

    /// Commits the open transaction.
    ///
    /// # Errors
    /// [`Error::OutcomeUnknown`] when it timed out (it may still commit);
    /// otherwise the failure: the transaction did not commit.
    pub fn commit_transaction(&self, timeout: Duration) -> crate::Result<()> {
        self.inner
            .commit_transaction(timeout)
            .map_err(|e| txn_error("committing the transaction", e, timeout))
    }

    /// Aborts the open transaction.
    pub fn abort_transaction(&self, timeout: Duration) -> crate::Result<()> {
        self.inner
            .abort_transaction(timeout)
            .map_err(|e| txn_error("aborting the transaction", e, timeout))
    }

    /// Sends output records (logical topics mapped by `physical`), each
    /// with its headers and `extra` (the transaction tag), and waits until
    /// all are acknowledged.
    pub(crate) fn produce_outputs(
        &self,
        records: &[crate::context::OutRecord],
        physical: &dyn Fn(&str) -> String,
        extra: Option<(&str, &[u8])>,
    ) -> crate::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let acks = Arc::new(AppendAcks::new(records.len()));
        let deadline = Instant::now() + self.delivery_timeout;
        let unknown = |what: String| Error::OutcomeUnknown {
            context: what,
            timeout_ms: self.delivery_timeout.as_millis() as u64,
        };
        for (index, r) in records.iter().enumerate() {
            let topic = physical(&r.topic);
            let mut rec = super::output::record(r, &topic, extra, acks.clone());
            loop {
                match self.inner.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if Instant::now() >= deadline {
                            return Err(unknown(format!(
                                "producing to {topic}: the local queue stayed full; {index} records were sent"
                            )));
                        }
                        rec = back;
                        std::thread::sleep(QUEUE_FULL_BACKOFF);
                    }
                    Err((e, _)) => return Err(Error::kafka(format!("producing to {topic}"), e)),
                }
            }
        }
        self.delivered(&acks, &format!("producing {} outputs", records.len()))
            .map(drop)
    }

    /// Waits for every delivery report of `acks` (up to the delivery
    /// timeout and a grace) and classifies a failure: a wait that expires,
    /// or a record that timed out in the producer, is an unknown outcome
    /// (the records may have landed). Returns where the records landed.
    fn delivered(&self, acks: &AppendAcks, what: &str) -> crate::Result<Vec<(i32, i64)>> {
        let wait = self.delivery_timeout + DELIVERY_GRACE;
        let (acks, all) = acks.wait(Instant::now() + wait);
        if !all {
            return Err(Error::OutcomeUnknown {
                context: format!("{what}: {} delivery reports received", acks.received),
                timeout_ms: wait.as_millis() as u64,
            });
        }
        if let Some(e) = acks.first_error {
            let fatal = self
                .fatal()
                .map(|f| format!("; the producer failed fatally ({f}) and must be recreated"))
                .unwrap_or_default();
            let failed = acks.failed;
            return Err(if acks.timed_out {
                Error::OutcomeUnknown {
                    context: format!(
                        "{what}: {failed} records failed, some timed out in the producer ({e}){fatal}"
                    ),
                    timeout_ms: self.delivery_timeout.as_millis() as u64,
                }
            } else {
                Error::kafka(format!("{what}: {failed} records failed{fatal}"), e)
            });
        }
        Ok(acks.landed)
    }

    /// Whether another producer with the same transactional id fenced
    /// this one (a new owner of the task took over).
    pub fn fenced(&self) -> bool {
        matches!(
            self.inner.client().fatal_error(),
            Some((
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch,
                _
            ))
        )
    }

    /// A fatal producer error (after which it must be recreated), if any.
    fn fatal(&self) -> Option<String> {
        self.inner
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }
}

/// A transactional client error, timeouts reported as unknown outcomes.
fn txn_error(what: &str, e: KafkaError, timeout: Duration) -> Error {
    let timed_out = match &e {
        KafkaError::Transaction(t) => {
            t.code() == RDKafkaErrorCode::OperationTimedOut || t.is_retriable()
        }
        _ => false,
    };
    if timed_out {
        Error::OutcomeUnknown {
            context: format!("{what}: {e}"),
            timeout_ms: timeout.as_millis() as u64,
        }
    } else {
        Error::kafka(what, e)
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// Appends a table partition's commits to its changelog partition.
#[derive(Debug)]
pub struct KafkaChangelogWriter {
    producer: Arc<ChangelogProducer>,
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
        producer: Arc<ChangelogProducer>,
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
    pub fn append_fence(&mut self, fence: TxnTag) -> crate::Result<()> {
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
    fn try_append(
        &self,
        records: &[ChangeRecord],
        payloads: &[Vec<u8>],
    ) -> crate::Result<Vec<Offset>> {
        let (topic, partition) = (self.topic.as_str(), self.partition());
        let what = || {
            format!(
                "appending {} records to {topic}[{partition}]",
                records.len()
            )
        };
        if payloads.len() != records.len() {
            return Err(Error::Kafka {
                context: format!("{}: {} payloads given", what(), payloads.len()),
                source: KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument),
            });
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
            return Err(Error::Kafka {
                context: format!("{}: a record was acknowledged at {p}@{offset}", what()),
                source: KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
            });
        }
        // The idempotent producer keeps a partition's records in order, so
        // the sorted offsets are the records' offsets, in record order.
        let mut offsets: Vec<Offset> = landed.into_iter().map(|(_, o)| Offset(o as u64)).collect();
        offsets.sort_unstable();
        if offsets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Kafka {
                context: format!(
                    "{}: the broker acknowledged two records at the same offset",
                    what()
                ),
                source: KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
            });
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
    ) -> crate::Result<KafkaChangelogReader> {
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
    fn check_exists(&mut self) -> crate::Result<()> {
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
    fn assign(&mut self, from: u64) -> crate::Result<()> {
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
    fn try_read(&mut self, from: Offset, max: usize) -> crate::Result<ChangelogBatch> {
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

    fn read_filtered(&mut self, from: Offset, max: usize) -> crate::Result<ChangelogBatch> {
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
    ) -> crate::Result<(Vec<(Offset, Option<TxnTag>, Option<ChangeRecord>)>, bool)> {
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
