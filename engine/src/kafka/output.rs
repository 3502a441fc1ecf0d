//! Producing a task's outputs (and dead letters) at commit: every record is
//! sent, then every delivery report is awaited; the commit goes on only
//! when all are acknowledged. A wait that expires is "outcome unknown".
//!
//! Keys are partitioned with Kafka's default (murmur2) partitioner, so the
//! partition of a key can be computed by any client.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::client::{KafkaConfig, log_to_tracing};
use crate::context::OutRecord;
use crate::{Error, Result};

type Report = std::result::Result<(), KafkaError>;

/// Routes each delivery report to the commit that sent the record.
struct OutputContext;

impl ClientContext for OutputContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        log_to_tracing(level, fac, msg);
    }
}

impl ProducerContext for OutputContext {
    type DeliveryOpaque = Box<mpsc::Sender<Report>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Box<mpsc::Sender<Report>>) {
        // The commit may have stopped waiting (outcome unknown): then the
        // report has nobody to go to.
        let _ = tx.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
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

/// Produces output records and waits for their acknowledgements.
pub struct OutputProducer {
    inner: ThreadedProducer<OutputContext>,
    topics: BTreeMap<String, String>,
    delivery_timeout: Duration,
}

impl std::fmt::Debug for OutputProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputProducer")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl OutputProducer {
    /// A producer; `topics` maps logical output names to physical ones.
    pub fn new(config: &KafkaConfig, topics: BTreeMap<String, String>) -> Result<OutputProducer> {
        let mut c = config.producer()?;
        c.set("partitioner", "murmur2_random");
        let inner = c
            .create_with_context(OutputContext)
            .map_err(|e| Error::kafka("creating the output producer", e))?;
        Ok(OutputProducer {
            inner,
            topics,
            delivery_timeout: config.delivery_timeout,
        })
    }

    pub(crate) fn physical<'a>(&'a self, logical: &'a str) -> &'a str {
        self.topics
            .get(logical)
            .map(String::as_str)
            .unwrap_or(logical)
    }

    /// Sends `records` and waits until all are acknowledged.
    pub fn produce(&self, records: &[OutRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.delivery_timeout + Duration::from_secs(1);
        let (tx, rx) = mpsc::channel();
        let unknown = |what: String| Error::OutcomeUnknown {
            context: what,
            timeout_ms: self.delivery_timeout.as_millis() as u64,
        };
        for r in records {
            let topic = self.physical(&r.topic);
            let mut rec = record(r, topic, None, Box::new(tx.clone()));
            loop {
                match self.inner.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if Instant::now() > deadline {
                            return Err(unknown(format!(
                                "producing to {topic}: the local queue stayed full"
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(1));
                        rec = back;
                    }
                    Err((e, _)) => return Err(Error::kafka(format!("producing to {topic}"), e)),
                }
            }
        }
        drop(tx);
        for _ in 0..records.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut))) => {
                    return Err(unknown(format!(
                        "producing {} outputs: a record timed out in the producer",
                        records.len()
                    )));
                }
                Ok(Err(e)) => return Err(Error::kafka("producing outputs", e)),
                Err(_) => return Err(unknown(format!("producing {} outputs", records.len()))),
            }
        }
        Ok(())
    }

    /// Waits for everything in flight, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner
            .flush(timeout)
            .map_err(|e| Error::kafka("flushing outputs", e))
    }
}
