//! Producing a task's outputs (and dead letters) at commit: every record is
//! sent, then every delivery report is awaited; the commit goes on only
//! when all are acknowledged. A wait that expires is "outcome unknown".
//!
//! Keys are partitioned with Kafka's default (murmur2) partitioner, so the
//! partition of a key can be computed by any client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::OutRecord;
use crate::client::KafkaConfig;
use crate::error::Result;
use crate::producer::AckedProducer;

/// Produces output records and waits for their acknowledgements (the
/// at-least-once path; under exactly-once each task's transactional
/// producer sends its outputs through the same
/// [`AckedProducer::produce_outputs`]).
pub struct OutputProducer {
    inner: Arc<AckedProducer>,
    topics: BTreeMap<String, String>,
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
        Ok(OutputProducer {
            inner: AckedProducer::for_outputs(config)?,
            topics,
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
        self.inner
            .produce_outputs(records, &|t| self.physical(t).to_string(), None)
    }

    /// Waits for everything in flight, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.flush(timeout)
    }
}
