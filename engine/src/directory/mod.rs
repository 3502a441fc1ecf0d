//! The owner directory: which instance owns each partition, and the gRPC
//! endpoint it serves, so a query for a key can be routed to its owner.
//!
//! The source of truth is the internal topic `<application id>-directory`
//! (one partition, `cleanup.policy=compact`). Every instance that
//! advertises an endpoint ([`AppConfig::advertised_endpoint`]) publishes an
//! *announcement* keyed by its member id: its endpoint and the partitions
//! it owns, with their state (restoring with progress, or running). It
//! publishes when that changes, and as a heartbeat; on a graceful shutdown
//! it publishes a tombstone. Every instance follows the topic from its
//! beginning and resolves owners from the latest announcement of each
//! member. This works on any Kafka-compatible broker: consumer-group
//! metadata is not used (Tansu's DescribeGroups returns no members).
//!
//! Invariants:
//! - An announcement is the whole state of its member: a later one
//!   replaces an earlier one (log order decides, not the epoch); a
//!   tombstone removes the member.
//! - An announcement older than the TTL ([`AppConfig::directory_ttl`]) is
//!   ignored: its member crashed or cannot reach the broker. Live members
//!   heartbeat every third of the TTL.
//! - When several live members claim one partition (during a handover, or
//!   from a member that has not yet noticed it lost it), the most recent
//!   claim wins: the latest `since` (when the member acquired it), then the
//!   latest `updated`, then the greatest member id. Kafka assigns a
//!   partition to one member at a time and a new owner acquires it after
//!   the previous one was revoked, so the newest claim is the owner's.
//!   Ordering by `since` rather than by the last heartbeat keeps a member
//!   that missed its revocation from winning by heartbeating.
//! - Times are the publishing host's wall clock (milliseconds since the
//!   epoch): instances' clocks must agree to well within the TTL.
//! - Resolution is a pure function of the announcements and of a time
//!   given as input ([`Directory::owner_at`]).
//!
//! The member id is [`AppConfig::instance_id`] when set (a restarted
//! static member replaces its own entry), otherwise
//! `<hostname>-<pid>-<nanoseconds>-<n>`, unique per start.

mod follower;
mod publisher;
mod service;

pub(crate) use service::{DirectoryService, ensure_topic};

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_state::{Partition, Timestamp};

use crate::registry::PartitionState;

/// The owner of a partition, according to the directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    /// The owning instance's member id.
    pub member: String,
    /// The gRPC endpoint it advertised.
    pub endpoint: String,
    /// The partition's state there (restoring, with records read so far,
    /// or running), as of its last announcement.
    pub state: PartitionState,
    /// When it acquired the partition (its clock).
    pub since: Timestamp,
    /// When it last announced itself (its clock).
    pub updated: Timestamp,
}

/// A live instance, as it last announced itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Its member id.
    pub member: String,
    /// The gRPC endpoint it advertised.
    pub endpoint: String,
    /// Increments with every change of its announcement (within one
    /// process; informational).
    pub epoch: u64,
    /// The partitions it claims, with their state. A claim may have lost
    /// to a newer one (see [`Directory::owner`]).
    pub partitions: BTreeMap<Partition, PartitionState>,
    /// When it last announced itself (its clock).
    pub updated: Timestamp,
}

/// The whole directory at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectorySnapshot {
    /// The time the snapshot was resolved at.
    pub at: Timestamp,
    /// The owner of every partition that has a live one.
    pub owners: BTreeMap<Partition, Owner>,
    /// Every live member.
    pub members: Vec<Member>,
    /// Whether the directory topic has been read to its end at least once
    /// (before that, owners may be missing or stale).
    pub caught_up: bool,
}

/// An announcement as it travels in the directory topic (JSON value, keyed
/// by the member id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Announcement {
    member: String,
    endpoint: String,
    epoch: u64,
    #[serde(default)]
    partitions: Vec<Claim>,
    updated_ms: u64,
    /// Input topics (physical names) whose records this member found in
    /// partitions their declared partitioner does not name: every
    /// instance stops routing those topics' tables by hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    misrouted: Vec<String>,
}

/// One claimed partition in an announcement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Claim {
    partition: u32,
    state: ClaimState,
    /// Changelog records read so far, while restoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restored_records: Option<u64>,
    /// Records per second, while restoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restore_rate: Option<f64>,
    /// When the member acquired the partition.
    #[serde(default)]
    since_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClaimState {
    Restoring,
    Running,
}

impl Claim {
    fn new(p: Partition, state: &PartitionState, since: Timestamp) -> Claim {
        let (state, restored_records, restore_rate) = match state {
            PartitionState::Restoring { records, rate } => {
                (ClaimState::Restoring, Some(*records), Some(*rate))
            }
            PartitionState::Running => (ClaimState::Running, None, None),
        };
        Claim {
            partition: p.0,
            state,
            restored_records,
            restore_rate,
            since_ms: since.0,
        }
    }

    fn state(&self) -> PartitionState {
        match self.state {
            ClaimState::Running => PartitionState::Running,
            ClaimState::Restoring => PartitionState::Restoring {
                records: self.restored_records.unwrap_or(0),
                rate: self.restore_rate.filter(|r| r.is_finite()).unwrap_or(0.0),
            },
        }
    }
}

/// What applying a directory record did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    Joined,
    Updated,
    Left,
    Ignored,
}

/// The latest announcement of every member: pure resolution logic.
#[derive(Debug, Default)]
struct View {
    members: BTreeMap<String, Announcement>,
}

impl View {
    fn apply(&mut self, key: &str, value: Option<Announcement>) -> Applied {
        match value {
            None => match self.members.remove(key) {
                Some(_) => Applied::Left,
                None => Applied::Ignored,
            },
            Some(mut a) => {
                // The key is the member's identity (compaction keeps the
                // latest record per key); the value's copy is informational.
                if a.member != key {
                    tracing::warn!(key, member = %a.member, "directory announcement whose member differs from its key; using the key");
                    a.member = key.to_string();
                }
                match self.members.insert(key.to_string(), a) {
                    Some(_) => Applied::Updated,
                    None => Applied::Joined,
                }
            }
        }
    }

    fn live(&self, now: Timestamp, ttl: Duration) -> impl Iterator<Item = &Announcement> {
        let ttl_ms = ttl.as_millis() as u64;
        // A timestamp ahead of `now` (clock skew) is live.
        self.members
            .values()
            .filter(move |a| now.0.saturating_sub(a.updated_ms) <= ttl_ms)
    }

    /// Every partition's winning claim among live members.
    fn winners(
        &self,
        now: Timestamp,
        ttl: Duration,
        only: Option<u32>,
    ) -> BTreeMap<u32, (&Announcement, &Claim)> {
        fn rank<'a>(a: &'a Announcement, c: &Claim) -> (u64, u64, &'a str) {
            (c.since_ms, a.updated_ms, a.member.as_str())
        }
        let mut best: BTreeMap<u32, (&Announcement, &Claim)> = BTreeMap::new();
        for a in self.live(now, ttl) {
            for c in a
                .partitions
                .iter()
                .filter(|c| only.is_none_or(|p| p == c.partition))
            {
                match best.entry(c.partition) {
                    Entry::Vacant(v) => {
                        v.insert((a, c));
                    }
                    Entry::Occupied(mut o) => {
                        if rank(a, c) > rank(o.get().0, o.get().1) {
                            o.insert((a, c));
                        }
                    }
                }
            }
        }
        best
    }

    fn owners(
        &self,
        now: Timestamp,
        ttl: Duration,
        only: Option<u32>,
    ) -> BTreeMap<Partition, Owner> {
        self.winners(now, ttl, only)
            .into_iter()
            .map(|(p, (a, c))| {
                let owner = Owner {
                    member: a.member.clone(),
                    endpoint: a.endpoint.clone(),
                    state: c.state(),
                    since: Timestamp(c.since_ms),
                    updated: Timestamp(a.updated_ms),
                };
                (Partition(p), owner)
            })
            .collect()
    }

    fn members(&self, now: Timestamp, ttl: Duration) -> Vec<Member> {
        self.live(now, ttl)
            .map(|a| Member {
                member: a.member.clone(),
                endpoint: a.endpoint.clone(),
                epoch: a.epoch,
                partitions: a
                    .partitions
                    .iter()
                    .map(|c| (Partition(c.partition), c.state()))
                    .collect(),
                updated: Timestamp(a.updated_ms),
            })
            .collect()
    }

    /// Forgets members expired for a whole further TTL (they are ignored
    /// from the first TTL on; this only bounds memory).
    fn prune(&mut self, now: Timestamp, ttl: Duration) -> usize {
        let before = self.members.len();
        let keep_ms = ttl.as_millis() as u64 * 2;
        self.members
            .retain(|_, a| now.0.saturating_sub(a.updated_ms) <= keep_ms);
        before - self.members.len()
    }
}

/// This instance's view of the owner directory: who owns each partition
/// and where to reach it. Cheap to clone; every clone sees the same view,
/// kept current by a background thread that follows the directory topic.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Shared>,
}

struct Shared {
    member: String,
    ttl: Duration,
    /// A lock rather than messages: every routed query reads the view
    /// synchronously on its own thread, and a round trip to the follower
    /// thread would add latency to each; the one writer applies a few
    /// records per second, so readers almost never wait.
    view: RwLock<View>,
    caught_up: AtomicBool,
    /// Counts applied announcements and prunes: a router that found a
    /// stale owner waits for it to move before trying again.
    changes: AtomicU64,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("member", &self.inner.member)
            .field("ttl", &self.inner.ttl)
            .field("caught_up", &self.is_caught_up())
            .finish_non_exhaustive()
    }
}

impl Directory {
    pub(crate) fn new(member: String, ttl: Duration) -> Directory {
        Directory {
            inner: Arc::new(Shared {
                member,
                ttl,
                view: RwLock::new(View::default()),
                caught_up: AtomicBool::new(false),
                changes: AtomicU64::new(0),
            }),
        }
    }

    /// This instance's member id (compare with [`Owner::member`] to know
    /// whether a partition is owned here).
    pub fn member_id(&self) -> &str {
        &self.inner.member
    }

    /// How long an announcement stays valid without a heartbeat.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Whether the directory topic has been read to its end at least once.
    pub fn is_caught_up(&self) -> bool {
        self.inner.caught_up.load(Ordering::Acquire)
    }

    /// The owner of partition `p` now, if a live member claims it.
    pub fn owner(&self, p: Partition) -> Option<Owner> {
        self.owner_at(p, Timestamp::now())
    }

    /// The owner of partition `p` at time `now` (members whose last
    /// announcement is older than the TTL at `now` are ignored).
    pub fn owner_at(&self, p: Partition, now: Timestamp) -> Option<Owner> {
        self.read(|v| v.owners(now, self.inner.ttl, Some(p.0)).remove(&p))
    }

    /// Every live member, as it last announced itself.
    pub fn members(&self) -> Vec<Member> {
        let now = Timestamp::now();
        self.read(|v| v.members(now, self.inner.ttl))
    }

    /// Whether a live member announced that records of input topic
    /// `topic` are not where the topic's declared partitioner puts them.
    pub fn misrouted(&self, topic: &str) -> bool {
        let now = Timestamp::now();
        self.read(|v| {
            v.live(now, self.inner.ttl)
                .any(|a| a.misrouted.iter().any(|t| t == topic))
        })
    }

    /// Owners and members now, resolved from one consistent view.
    pub fn snapshot(&self) -> DirectorySnapshot {
        self.snapshot_at(Timestamp::now())
    }

    /// Owners and members at time `now`, resolved from one consistent view.
    pub fn snapshot_at(&self, now: Timestamp) -> DirectorySnapshot {
        let caught_up = self.is_caught_up();
        let ttl = self.inner.ttl;
        self.read(|v| DirectorySnapshot {
            at: now,
            owners: v.owners(now, ttl, None),
            members: v.members(now, ttl),
            caught_up,
        })
    }

    fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        // A panic while holding the lock cannot leave the map half-written
        // in a way resolution cares about: keep serving.
        let g = self.inner.view.read().unwrap_or_else(|e| e.into_inner());
        f(&g)
    }

    pub(crate) fn apply(&self, key: &str, value: Option<Announcement>) -> Applied {
        let applied = self
            .inner
            .view
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(key, value);
        self.inner.changes.fetch_add(1, Ordering::AcqRel);
        applied
    }

    pub(crate) fn prune(&self, now: Timestamp) -> usize {
        let n = self
            .inner
            .view
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .prune(now, self.inner.ttl);
        if n > 0 {
            self.inner.changes.fetch_add(1, Ordering::AcqRel);
        }
        n
    }

    /// A counter that moves whenever the view may have changed (an
    /// announcement applied, members expired).
    pub fn changes(&self) -> u64 {
        self.inner.changes.load(Ordering::Acquire)
    }

    /// Waits (polling, off any lock) until the view changed after `seen`
    /// or `timeout` passed; true when it changed.
    pub async fn changed_since(&self, seen: u64, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if self.changes() != seen {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn set_caught_up(&self) -> bool {
        !self.inner.caught_up.swap(true, Ordering::AcqRel)
    }
}

/// Whether the thread should stop, waiting up to `wait` for the signal.
fn stopped(stop: &mpsc::Receiver<()>, wait: Duration) -> bool {
    !matches!(
        stop.recv_timeout(wait),
        Err(mpsc::RecvTimeoutError::Timeout)
    )
}

#[cfg(test)]
mod tests;
