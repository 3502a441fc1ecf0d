//! Follows the directory topic into a [`Directory`]: the Kafka layer's
//! [`DirectoryReader`] reads partition 0 from its start and keeps polling
//! for new records, with bounded waits so a stop is noticed within one
//! poll. Its first end marks the directory caught up. Records that cannot
//! be decoded are logged and skipped: one bad record must not blind the
//! router.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_kafka::directory::{DirectoryRead, DirectoryReader};
use strata_state::Timestamp;

use super::{Announcement, Applied, Directory, stopped};
use crate::Result;
use crate::config::AppConfig;

/// Longest wait for a record before checking the stop signal.
const POLL: Duration = Duration::from_millis(100);
/// How often expired members are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// Pause after a consumer error, so a persistent one does not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);

pub(super) struct Follower {
    reader: DirectoryReader,
    topic: String,
    directory: Directory,
}

impl Follower {
    pub(super) fn new(config: &AppConfig, directory: Directory) -> Result<Follower> {
        let topic = config.directory_topic();
        let reader = DirectoryReader::new(&config.kafka, &topic)?;
        Ok(Follower {
            reader,
            topic,
            directory,
        })
    }

    pub(super) fn run(self, stop: mpsc::Receiver<()>) {
        let span = tracing::info_span!("directory_follower", member = %self.directory.member_id());
        let _g = span.enter();
        let (started, mut last_prune, mut records) = (Instant::now(), Instant::now(), 0u64);
        while !stopped(&stop, Duration::ZERO) {
            match self.reader.poll(POLL) {
                None => {}
                Some(Ok(DirectoryRead::Record { offset, key, value })) => {
                    records += 1;
                    self.handle(offset, key.as_deref(), value.as_deref());
                }
                // Only the first end matters; later ones come after each
                // new record.
                Some(Ok(DirectoryRead::End)) if self.directory.set_caught_up() => {
                    tracing::info!(
                        records,
                        members = self.directory.members().len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "owner directory caught up"
                    );
                }
                Some(Ok(DirectoryRead::End)) => {}
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

    fn handle(&self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            tracing::warn!(topic = %self.topic, offset, "owner directory record without a UTF-8 key; skipped");
            return;
        };
        let value = match value
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
