//! The acknowledged producer: one librdkafka producer shared by every
//! changelog writer, the output producer and (one per task) the
//! transactional writes of exactly-once. Every write waits for its
//! delivery reports; a wait that expires, or a record that timed out in
//! the producer, is [`Error::OutcomeUnknown`] (the records may have
//! landed), never a failure.
//!
//! Delivery is counted per write, not tracked per record: each record
//! carries a reference to its write's [`AppendAcks`], so sending a record
//! allocates nothing and a report is a short locked update.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::OutRecord;
use crate::client::{KafkaConfig, create, log_to_tracing};
use crate::error::{Error, Result};

/// How long a write sleeps before retrying a record the producer's full
/// local queue refused.
pub(crate) const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);
/// Slack added to librdkafka's delivery timeout when waiting for delivery
/// reports, so librdkafka's own (more precise) timeout report comes first.
const DELIVERY_GRACE: Duration = Duration::from_secs(1);

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
    pub(crate) fn new(expected: usize) -> AppendAcks {
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
pub struct AckedProducer {
    pub(crate) inner: ThreadedProducer<DeliveryContext>,
    pub(crate) delivery_timeout: Duration,
}

impl std::fmt::Debug for AckedProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckedProducer")
            .field("delivery_timeout", &self.delivery_timeout)
            .finish_non_exhaustive()
    }
}

impl AckedProducer {
    /// A producer for the cluster `config` names (`acks=all`, idempotent).
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration; [`Error::Kafka`] if
    /// librdkafka cannot create the producer.
    pub fn new(config: &KafkaConfig) -> Result<Arc<AckedProducer>> {
        let inner = create(&config.producer()?, DeliveryContext, "changelog producer")?;
        Ok(Arc::new(AckedProducer {
            inner,
            delivery_timeout: config.delivery_timeout,
        }))
    }

    /// A producer of output records (`acks=all`, idempotent, keys
    /// partitioned with Kafka's default murmur2 partitioner).
    ///
    /// # Errors
    /// As [`AckedProducer::new`].
    pub fn for_outputs(config: &KafkaConfig) -> Result<Arc<AckedProducer>> {
        let mut c = config.producer()?;
        c.set("partitioner", "murmur2_random");
        let inner = create(&c, DeliveryContext, "output producer")?;
        Ok(Arc::new(AckedProducer {
            inner,
            delivery_timeout: config.delivery_timeout,
        }))
    }

    /// Waits until everything sent has been acknowledged or failed, up to
    /// `timeout`.
    ///
    /// # Errors
    /// [`Error::OutcomeUnknown`] if records are still in flight at the end.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
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
    /// [`AckedProducer::init_transactions`] before anything else.
    ///
    /// # Errors
    /// As [`AckedProducer::new`].
    pub fn transactional(config: &KafkaConfig, txn_id: &str) -> Result<Arc<AckedProducer>> {
        let mut c = config.producer()?;
        c.set("transactional.id", txn_id)
            .set(
                "transaction.timeout.ms",
                ms(config.transaction_timeout.max(config.delivery_timeout)),
            )
            .set("partitioner", "murmur2_random");
        let inner = create(&c, DeliveryContext, "transactional producer")?;
        Ok(Arc::new(AckedProducer {
            inner,
            delivery_timeout: config.delivery_timeout,
        }))
    }

    /// Registers the transactional id with the broker: fences every earlier
    /// producer of the id and waits until their open transaction is
    /// aborted (or committed, if it was already committing).
    pub fn init_transactions(&self, timeout: Duration) -> Result<()> {
        self.inner.init_transactions(timeout).map_err(|e| {
            txn_error(
                "initializing transactions (fencing earlier producers of the task)",
                e,
                timeout,
            )
        })
    }

    /// Begins a transaction.
    pub fn begin_transaction(&self) -> Result<()> {
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
    ) -> Result<()> {
        self.inner
            .send_offsets_to_transaction(tpl, group, timeout)
            .map_err(|e| txn_error("sending offsets to the transaction", e, timeout))
    }

    /// Commits the open transaction.
    ///
    /// # Errors
    /// [`Error::OutcomeUnknown`] when it timed out (it may still commit);
    /// otherwise the failure: the transaction did not commit.
    pub fn commit_transaction(&self, timeout: Duration) -> Result<()> {
        self.inner
            .commit_transaction(timeout)
            .map_err(|e| txn_error("committing the transaction", e, timeout))
    }

    /// Aborts the open transaction.
    pub fn abort_transaction(&self, timeout: Duration) -> Result<()> {
        self.inner
            .abort_transaction(timeout)
            .map_err(|e| txn_error("aborting the transaction", e, timeout))
    }

    /// Sends output records (logical topics mapped by `physical`), each
    /// with its headers and `extra` (the transaction tag), and waits until
    /// all are acknowledged.
    pub(crate) fn produce_outputs(
        &self,
        records: &[OutRecord],
        physical: &dyn Fn(&str) -> String,
        extra: Option<(&str, &[u8])>,
    ) -> Result<()> {
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
            let mut rec = record(r, &topic, extra, acks.clone());
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
    pub(crate) fn delivered(&self, acks: &AppendAcks, what: &str) -> Result<Vec<(i32, i64)>> {
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

/// `r` as a record for `topic` (physical), with its headers and `extra`.
pub(crate) fn record<'a, O: rdkafka::util::IntoOpaque>(
    r: &'a OutRecord,
    topic: &'a str,
    extra: Option<(&'a str, &'a [u8])>,
    opaque: O,
) -> BaseRecord<'a, [u8], [u8], O> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
    for (k, v) in r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .chain(extra)
    {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let mut rec: BaseRecord<'a, [u8], [u8], O> =
        BaseRecord::with_opaque_to(topic, opaque).headers(headers);
    if let Some(k) = &r.key {
        rec = rec.key(k.as_slice());
    }
    if let Some(v) = &r.value {
        rec = rec.payload(v.as_slice());
    }
    rec
}
