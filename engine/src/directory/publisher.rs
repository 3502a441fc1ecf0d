//! Publishes this instance's announcement to the directory topic: every
//! `directory_interval` it reads what the registry says it owns, and
//! produces an announcement when that changed, when a previous one failed,
//! or as a heartbeat every third of the TTL. On stop it produces a
//! tombstone for its key and waits (bounded by the request timeout) for
//! everything to be delivered.
//!
//! Produces are asynchronous: a failed delivery only marks the state to
//! be published again on the next tick. The idempotent producer keeps this
//! member's records in order, so the tombstone is its last record.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_kafka::directory::DirectoryWriter;
use strata_state::{Partition, Timestamp};

use super::{Announcement, Claim, stopped};
use crate::config::AppConfig;
use crate::registry::{PartitionState, Registry};
use crate::{Error, Result};

pub(super) struct Publisher {
    writer: DirectoryWriter,
    member: String,
    endpoint: String,
    registry: Registry,
    interval: Duration,
    heartbeat: Duration,
    flush_timeout: Duration,
}

impl Publisher {
    pub(super) fn new(
        config: &AppConfig,
        registry: Registry,
        member: String,
        endpoint: String,
        ttl: Duration,
    ) -> Result<Publisher> {
        let writer = DirectoryWriter::new(&config.kafka, &config.directory_topic(), &member)?;
        Ok(Publisher {
            writer,
            member,
            endpoint,
            registry,
            interval: config.directory_interval,
            heartbeat: ttl / 3,
            flush_timeout: config.kafka.request_timeout,
        })
    }

    pub(super) fn run(self, stop: mpsc::Receiver<()>) {
        let span = tracing::info_span!("directory_publisher", member = %self.member);
        let _g = span.enter();
        let mut since = BTreeMap::new();
        let mut last: Option<Vec<Claim>> = None;
        let mut last_misrouted: Vec<String> = Vec::new();
        let (mut epoch, mut dirty, mut sent_at) = (0u64, true, None::<Instant>);
        loop {
            let now = Timestamp::now();
            let claims = claims_of(
                self.registry.partitions(),
                self.registry.assigned(),
                &mut since,
                now,
            );
            let misrouted: Vec<String> = self
                .registry
                .route_checks()
                .iter()
                .filter(|c| c.mismatched() > 0)
                .map(|c| c.topic().to_string())
                .collect();
            if misrouted != last_misrouted {
                tracing::info!(topics = ?misrouted, "input topics not partitioned as declared; announcing");
                last_misrouted = misrouted;
                epoch += 1;
                dirty = true;
            }
            if last.as_ref() != Some(&claims) {
                epoch += 1;
                let kinds = |cs: &[Claim]| {
                    cs.iter()
                        .map(|c| (c.partition, c.state))
                        .collect::<Vec<_>>()
                };
                if last.as_deref().map(kinds) != Some(kinds(&claims)) {
                    tracing::info!(epoch, partitions = ?kinds(&claims), "ownership changed; announcing");
                }
                last = Some(claims);
                dirty = true;
            }
            dirty |= self.writer.take_failed();
            if dirty || sent_at.is_none_or(|t| t.elapsed() >= self.heartbeat) {
                let a = Announcement {
                    member: self.member.clone(),
                    endpoint: self.endpoint.clone(),
                    epoch,
                    partitions: last.clone().unwrap_or_default(),
                    updated_ms: now.0,
                    misrouted: last_misrouted.clone(),
                };
                match self.send(Some(&a)) {
                    Ok(()) => {
                        tracing::trace!(epoch, "announced");
                        (dirty, sent_at) = (false, Some(Instant::now()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot publish to the owner directory; retrying")
                    }
                }
            }
            self.writer.poll();
            if stopped(&stop, self.interval) {
                break;
            }
        }
        // Withdraw: the tombstone tells others at once (rather than after
        // the TTL) that nothing is served here any more.
        if let Err(e) = self.send(None) {
            tracing::warn!(error = %e, "cannot withdraw from the owner directory; others ignore this member after the TTL");
        }
        match self.writer.flush(self.flush_timeout) {
            Ok(true) => tracing::info!("withdrew from the owner directory"),
            Ok(false) => tracing::warn!(
                "the owner directory withdrawal was not delivered; others ignore this member after the TTL"
            ),
            Err(e) => tracing::warn!(
                error = %e, timeout_ms = self.flush_timeout.as_millis() as u64,
                "owner directory withdrawal: outcome unknown; others ignore this member after the TTL"
            ),
        }
    }

    /// Enqueues an announcement (or, with `None`, a tombstone).
    fn send(&self, a: Option<&Announcement>) -> Result<()> {
        let payload = a
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Io {
                context: "encoding an owner directory announcement".into(),
                source: e.into(),
            })?;
        Ok(self.writer.send(payload.as_deref())?)
    }
}

/// The partitions this instance owns, as claims: a partition is restoring
/// while any of its tables is (records and rates summed), otherwise
/// running. Partitions of a topology without tables come from the tasks
/// opened here. `since` remembers when each was first seen (and forgets
/// released ones), so a claim keeps its acquisition time.
fn claims_of(
    tables: Vec<(String, Partition, PartitionState)>,
    assigned: Vec<Partition>,
    since: &mut BTreeMap<u32, u64>,
    now: Timestamp,
) -> Vec<Claim> {
    let mut states: BTreeMap<u32, PartitionState> = BTreeMap::new();
    for (_, p, s) in tables {
        let merged = match (states.remove(&p.0), s) {
            (None | Some(PartitionState::Running), s) => s,
            (Some(r @ PartitionState::Restoring { .. }), PartitionState::Running) => r,
            (
                Some(PartitionState::Restoring {
                    records: a,
                    rate: x,
                }),
                PartitionState::Restoring {
                    records: b,
                    rate: y,
                },
            ) => PartitionState::Restoring {
                records: a + b,
                rate: x + y,
            },
        };
        states.insert(p.0, merged);
    }
    for p in assigned {
        states.entry(p.0).or_insert(PartitionState::Running);
    }
    since.retain(|p, _| states.contains_key(p));
    states
        .into_iter()
        .map(|(p, s)| {
            Claim::new(
                Partition(p),
                &s,
                Timestamp(*since.entry(p).or_insert(now.0)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::ClaimState;
    use super::*;

    #[test]
    fn claims_merge_tables_and_keep_acquisition_times() {
        let restoring = |records| PartitionState::Restoring { records, rate: 1.0 };
        let mut since = BTreeMap::new();
        let tables = vec![
            ("a".to_string(), Partition(0), PartitionState::Running),
            ("b".to_string(), Partition(0), restoring(5)),
            ("c".to_string(), Partition(0), restoring(7)),
            ("a".to_string(), Partition(1), PartitionState::Running),
        ];
        let c = claims_of(
            tables,
            vec![Partition(1), Partition(2)],
            &mut since,
            Timestamp(100),
        );
        assert_eq!(
            c.iter().map(|c| (c.partition, c.state)).collect::<Vec<_>>(),
            [
                (0, ClaimState::Restoring),
                (1, ClaimState::Running),
                (2, ClaimState::Running)
            ]
        );
        assert_eq!(
            (c[0].restored_records, c[0].restore_rate),
            (Some(12), Some(2.0))
        );
        assert!(c.iter().all(|c| c.since_ms == 100));
        // Later: partition 0 released, 1 kept, 3 acquired.
        let c = claims_of(
            vec![],
            vec![Partition(1), Partition(3)],
            &mut since,
            Timestamp(200),
        );
        assert_eq!(
            c.iter()
                .map(|c| (c.partition, c.since_ms))
                .collect::<Vec<_>>(),
            [(1, 100), (3, 200)]
        );
        // Re-acquired partitions get a new acquisition time.
        let c = claims_of(vec![], vec![Partition(0)], &mut since, Timestamp(300));
        assert_eq!(
            c.iter()
                .map(|c| (c.partition, c.since_ms))
                .collect::<Vec<_>>(),
            [(0, 300)]
        );
    }
}
