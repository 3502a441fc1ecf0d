//! Follows the directory topic into a [`Directory`]: a plain assign-only
//! consumer (no group, no commits) reads partition 0 from offset 0 and
//! keeps polling for new records, with bounded waits so a stop is noticed
//! within one poll.
//!
//! Broker notes: the first partition EOF marks the directory caught up
//! (the fetch path's EOF is right on Tansu, whose ListOffsets is not, so
//! no end offset is ever asked for); reading starts at offset 0 and falls
//! back to the earliest offset if compaction or retention removed it.
//! Records that cannot be decoded are logged and skipped: one bad record
//! must not blind the router.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use strata_state::Timestamp;

use super::{Announcement, Applied, Directory, stopped};
use crate::config::AppConfig;
use crate::kafka::client::{TracingContext, create};
use crate::{Error, Result};

/// Longest wait for a record before checking the stop signal.
const POLL: Duration = Duration::from_millis(100);
/// How often expired members are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// Pause after a consumer error, so a persistent one does not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);

pub(super) struct Follower {
    consumer: BaseConsumer<TracingContext>,
    topic: String,
    directory: Directory,
}

impl Follower {
    pub(super) fn new(config: &AppConfig, directory: Directory) -> Result<Follower> {
        let prefix = &config.kafka.client_id_prefix;
        let mut c = config.kafka.restore_consumer()?;
        // A nominal group (librdkafka's assign needs one); never joined.
        c.set("client.id", format!("{prefix}-directory"))
            .set("group.id", format!("{prefix}-directory"))
            .set("auto.offset.reset", "earliest")
            // An idle follower's fetch returns within this, so changes
            // arrive within about this long after they are produced.
            .set("fetch.wait.max.ms", "250");
        let consumer: BaseConsumer<TracingContext> =
            create(&c, TracingContext, "owner directory reader")?;
        let topic = config.directory_topic();
        let mut tpl = TopicPartitionList::new();
        let context = || format!("assigning {topic}[0] to the owner directory reader");
        tpl.add_partition_offset(&topic, 0, Offset::Offset(0))
            .map_err(|e| Error::kafka(context(), e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka(context(), e))?;
        Ok(Follower {
            consumer,
            topic,
            directory,
        })
    }

    pub(super) fn run(self, stop: mpsc::Receiver<()>) {
        let span = tracing::info_span!("directory_follower", member = %self.directory.member_id());
        let _g = span.enter();
        let (started, mut last_prune, mut records) = (Instant::now(), Instant::now(), 0u64);
        while !stopped(&stop, Duration::ZERO) {
            match self.consumer.poll(POLL) {
                None => {}
                Some(Ok(m)) => {
                    records += 1;
                    self.handle(&m);
                }
                // Only the first end matters; later ones come after each
                // new record.
                Some(Err(KafkaError::PartitionEOF(_))) if self.directory.set_caught_up() => {
                    tracing::info!(
                        records,
                        members = self.directory.members().len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "owner directory caught up"
                    );
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, topic = %self.topic, "reading the owner directory");
                    if stopped(&stop, ERROR_BACKOFF) {
                        break;
                    }
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                let forgotten = self.directory.prune(Timestamp::now());
                if forgotten > 0 {
                    tracing::debug!(forgotten, "forgot expired owner directory members");
                }
                last_prune = Instant::now();
            }
        }
        tracing::debug!(records, "owner directory reader stopped");
    }

    fn handle(&self, m: &BorrowedMessage<'_>) {
        let offset = m.offset();
        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            tracing::warn!(topic = %self.topic, offset, "owner directory record without a UTF-8 key; skipped");
            return;
        };
        let value = match m
            .payload()
            .map(serde_json::from_slice::<Announcement>)
            .transpose()
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(topic = %self.topic, offset, member = key, error = %e, "undecodable owner directory record; skipped");
                return;
            }
        };
        let partitions = value
            .as_ref()
            .map(|a| a.partitions.iter().map(|c| c.partition).collect::<Vec<_>>());
        match self.directory.apply(key, value) {
            Applied::Joined => tracing::info!(
                member = key,
                ?partitions,
                offset,
                "member joined the owner directory"
            ),
            Applied::Left => {
                tracing::info!(member = key, offset, "member left the owner directory")
            }
            Applied::Updated => {
                tracing::debug!(member = key, ?partitions, offset, "member updated")
            }
            Applied::Ignored => {}
        }
    }
}
