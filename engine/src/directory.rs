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

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_state::{Partition, Timestamp};

use crate::config::AppConfig;
use crate::kafka::admin::{KafkaAdmin, TopicSpec};
use crate::registry::{PartitionState, Registry};
use crate::{Error, Result};

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

/// Creates (with `manage_topics`) or checks the directory topic.
pub(crate) fn ensure_topic(admin: &KafkaAdmin, config: &AppConfig) -> Result<()> {
    let name = config.directory_topic();
    if config.manage_topics {
        admin.ensure_topic(&TopicSpec::new(name, 1).config("cleanup.policy", "compact"))?;
        return Ok(());
    }
    match admin.partition_count(&name)? {
        Some(1) => Ok(()),
        Some(n) => Err(Error::Topology(format!(
            "the owner directory topic {name:?} has {n} partitions; recreate it with 1 partition and cleanup.policy=compact"
        ))),
        None => Err(Error::Topology(format!(
            "topic {name:?} does not exist (manage_topics is off): create it with 1 partition and \
             cleanup.policy=compact (it is the owner directory)"
        ))),
    }
}

/// The directory's threads: a follower (always) and a publisher (when the
/// instance advertises an endpoint). Dropping it stops both.
pub(crate) struct DirectoryService {
    directory: Directory,
    publisher: Option<Stoppable>,
    follower: Option<Stoppable>,
}

impl DirectoryService {
    /// Starts following the directory topic. Publishing starts with
    /// [`DirectoryService::publish`], once the endpoint is known.
    pub(crate) fn follow(config: &AppConfig) -> Result<DirectoryService> {
        let ttl = config
            .directory_ttl
            .unwrap_or(config.kafka.session_timeout * 3);
        let member = member_id(config);
        let directory = Directory::new(member.clone(), ttl);
        let mut service = DirectoryService {
            directory: directory.clone(),
            publisher: None,
            follower: None,
        };
        let follower = follower::Follower::new(config, directory)?;
        service.follower = Some(Stoppable::spawn("strata-directory-follow", move |stop| {
            follower.run(stop)
        })?);
        tracing::info!(
            member = %member, topic = %config.directory_topic(), ttl_ms = ttl.as_millis() as u64,
            "following the owner directory"
        );
        Ok(service)
    }

    /// Starts publishing this instance's partitions with `endpoint`, the
    /// gRPC endpoint others reach it at.
    pub(crate) fn publish(
        &mut self,
        config: &AppConfig,
        registry: Registry,
        endpoint: String,
    ) -> Result<()> {
        let member = self.directory.member_id().to_string();
        let ttl = self.directory.ttl();
        tracing::info!(member = %member, endpoint = %endpoint, "publishing to the owner directory");
        let publisher = publisher::Publisher::new(config, registry, member, endpoint, ttl)?;
        self.publisher = Some(Stoppable::spawn("strata-directory-publish", move |stop| {
            publisher.run(stop)
        })?);
        Ok(())
    }

    pub(crate) fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Stops publishing: the publisher withdraws this instance (tombstone).
    pub(crate) fn stop_publisher(&mut self) {
        if let Some(p) = self.publisher.take() {
            p.stop();
        }
    }

    /// Stops both threads.
    pub(crate) fn stop(&mut self) {
        self.stop_publisher();
        if let Some(f) = self.follower.take() {
            f.stop();
        }
    }
}

impl Drop for DirectoryService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A named thread that runs until its stop channel disconnects.
struct Stoppable {
    name: &'static str,
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Stoppable {
    fn spawn(
        name: &'static str,
        f: impl FnOnce(mpsc::Receiver<()>) + Send + 'static,
    ) -> Result<Stoppable> {
        let (stop, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(rx))
            .map_err(|e| Error::Io {
                context: format!("spawning thread {name}"),
                source: e,
            })?;
        Ok(Stoppable { name, stop, handle })
    }

    fn stop(self) {
        drop(self.stop);
        if self.handle.join().is_err() {
            tracing::error!(thread = self.name, "owner directory thread panicked");
        }
    }
}

/// Whether the thread should stop, waiting up to `wait` for the signal.
fn stopped(stop: &mpsc::Receiver<()>, wait: Duration) -> bool {
    !matches!(
        stop.recv_timeout(wait),
        Err(mpsc::RecvTimeoutError::Timeout)
    )
}

/// The instance's member id: its static membership id, or one unique to
/// this start.
fn member_id(config: &AppConfig) -> String {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    if let Some(id) = &config.instance_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{host}-{}-{nanos}-{}",
        std::process::id(),
        STARTS.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn ann(member: &str, updated_ms: u64, claims: &[(u32, ClaimState, u64)]) -> Announcement {
        Announcement {
            member: member.into(),
            endpoint: format!("http://{member}:7001"),
            epoch: 1,
            partitions: claims
                .iter()
                .map(|&(partition, state, since_ms)| Claim {
                    partition,
                    state,
                    restored_records: (state == ClaimState::Restoring).then_some(42),
                    restore_rate: None,
                    since_ms,
                })
                .collect(),
            updated_ms,
            misrouted: Vec::new(),
        }
    }

    fn owner_of(v: &View, p: u32, now: u64) -> Option<String> {
        v.owners(Timestamp(now), TTL, Some(p))
            .remove(&Partition(p))
            .map(|o| o.member)
    }

    use ClaimState::{Restoring, Running};

    #[test]
    fn the_most_recent_claim_wins_whatever_the_heartbeats() {
        let mut v = View::default();
        // `a` acquired partition 0 at 1000 and keeps heartbeating; `b`
        // acquired it at 5000 (a missed its revocation).
        assert_eq!(
            v.apply(
                "a",
                Some(ann("a", 9_000, &[(0, Running, 1_000), (1, Running, 1_000)]))
            ),
            Applied::Joined
        );
        v.apply("b", Some(ann("b", 5_000, &[(0, Restoring, 5_000)])));
        assert_eq!(owner_of(&v, 0, 9_000).as_deref(), Some("b"));
        assert_eq!(owner_of(&v, 1, 9_000).as_deref(), Some("a"));
        let o = v.owners(Timestamp(9_000), TTL, None);
        assert_eq!(
            o[&Partition(0)].state,
            PartitionState::Restoring {
                records: 42,
                rate: 0.0
            }
        );
        assert_eq!(o[&Partition(0)].endpoint, "http://b:7001");
        assert_eq!(o.len(), 2);
        // Same acquisition time: the later announcement, then the greater id.
        v.apply("c", Some(ann("c", 6_000, &[(2, Running, 3_000)])));
        v.apply("d", Some(ann("d", 7_000, &[(2, Running, 3_000)])));
        assert_eq!(owner_of(&v, 2, 9_000).as_deref(), Some("d"));
        v.apply("e", Some(ann("e", 7_000, &[(2, Running, 3_000)])));
        assert_eq!(owner_of(&v, 2, 9_000).as_deref(), Some("e"));
        assert_eq!(owner_of(&v, 3, 9_000), None);
    }

    #[test]
    fn expired_members_are_ignored_and_then_forgotten() {
        let mut v = View::default();
        v.apply("old", Some(ann("old", 1_000, &[(0, Running, 1_000)])));
        v.apply("new", Some(ann("new", 8_000, &[(0, Running, 500)])));
        // Before old expires, its newer claim wins.
        assert_eq!(owner_of(&v, 0, 11_000).as_deref(), Some("old"));
        // After its TTL, the older claim of a live member takes over.
        assert_eq!(owner_of(&v, 0, 11_001).as_deref(), Some("new"));
        assert_eq!(v.members(Timestamp(11_001), TTL).len(), 1);
        // A heartbeat revives it.
        v.apply("old", Some(ann("old", 11_500, &[(0, Running, 1_000)])));
        assert_eq!(owner_of(&v, 0, 12_000).as_deref(), Some("old"));
        // Nobody live: no owner.
        assert_eq!(owner_of(&v, 0, 30_000), None);
        // A clock ahead of ours is not expired.
        v.apply("ahead", Some(ann("ahead", 40_000, &[(1, Running, 40_000)])));
        assert_eq!(owner_of(&v, 1, 30_000).as_deref(), Some("ahead"));
        // Pruning forgets only members expired for two TTLs.
        assert_eq!(v.prune(Timestamp(28_001), TTL), 1);
        assert_eq!(v.members.keys().collect::<Vec<_>>(), ["ahead", "old"]);
    }

    #[test]
    fn tombstones_remove_members_and_later_records_replace_earlier() {
        let mut v = View::default();
        v.apply(
            "a",
            Some(ann("a", 1_000, &[(0, Running, 1_000), (1, Running, 1_000)])),
        );
        v.apply("b", Some(ann("b", 1_000, &[(0, Running, 500)])));
        assert_eq!(owner_of(&v, 0, 2_000).as_deref(), Some("a"));
        // a releases partition 0: its new announcement replaces the old.
        assert_eq!(
            v.apply("a", Some(ann("a", 1_500, &[(1, Running, 1_000)]))),
            Applied::Updated
        );
        assert_eq!(owner_of(&v, 0, 2_000).as_deref(), Some("b"));
        // a leaves.
        assert_eq!(v.apply("a", None), Applied::Left);
        assert_eq!(owner_of(&v, 1, 2_000), None);
        assert_eq!(v.apply("a", None), Applied::Ignored);
        // The key is the identity, whatever the value says.
        v.apply("c", Some(ann("impostor", 1_000, &[(1, Running, 1_000)])));
        assert_eq!(owner_of(&v, 1, 2_000).as_deref(), Some("c"));
    }

    #[test]
    fn the_wire_format_is_stable_json() {
        let a = ann("m1", 1_234, &[(0, Restoring, 1_000), (3, Running, 1_100)]);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "member": "m1", "endpoint": "http://m1:7001", "epoch": 1, "updated_ms": 1234,
                "partitions": [
                    {"partition": 0, "state": "restoring", "restored_records": 42, "since_ms": 1000},
                    {"partition": 3, "state": "running", "since_ms": 1100},
                ],
            })
        );
        // Unknown fields are ignored and optional ones default (newer or
        // older publishers).
        let parsed: Announcement = serde_json::from_str(
            r#"{"member":"x","endpoint":"http://x:1","epoch":2,"updated_ms":5,"future":true,
                "partitions":[{"partition":1,"state":"running"}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.partitions[0].since_ms, 0);
        assert!(parsed.misrouted.is_empty());
        assert!(serde_json::from_str::<Announcement>(r#"{"member":"x"}"#).is_err());
    }

    #[test]
    fn misrouted_topics_come_from_live_members_only() {
        let d = Directory::new("me".into(), TTL);
        let now = Timestamp::now().0;
        let mut a = ann("a", now, &[(0, ClaimState::Running, now)]);
        a.misrouted = vec!["orders".into()];
        assert_eq!(
            serde_json::to_value(&a).unwrap()["misrouted"],
            serde_json::json!(["orders"])
        );
        d.apply("a", Some(a));
        assert!(d.misrouted("orders"));
        assert!(!d.misrouted("payments"));
        // Expired members say nothing.
        let mut old = ann("b", now - 2 * TTL.as_millis() as u64, &[]);
        old.misrouted = vec!["payments".into()];
        d.apply("b", Some(old));
        assert!(!d.misrouted("payments"));
        // Withdrawn: forgotten.
        d.apply("a", None);
        assert!(!d.misrouted("orders"));
    }

    #[test]
    fn snapshots_resolve_one_view_at_a_given_time() {
        let d = Directory::new("me".into(), TTL);
        assert!(!d.is_caught_up());
        d.apply("me", Some(ann("me", 1_000, &[(0, Running, 1_000)])));
        d.apply("you", Some(ann("you", 1_000, &[(1, Running, 1_000)])));
        assert!(d.set_caught_up());
        assert!(!d.set_caught_up());
        let s = d.snapshot_at(Timestamp(2_000));
        assert!(s.caught_up);
        assert_eq!(s.members.len(), 2);
        assert_eq!(s.owners[&Partition(0)].member, d.member_id());
        assert_eq!(
            d.owner_at(Partition(1), Timestamp(2_000))
                .map(|o| o.member)
                .as_deref(),
            Some("you")
        );
        assert_eq!(d.owner_at(Partition(1), Timestamp(20_000)), None);
    }

    #[test]
    fn member_ids_are_unique_per_start_unless_static() {
        let mut c = AppConfig::new("app", "127.0.0.1:9092");
        let (a, b) = (member_id(&c), member_id(&c));
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()));
        c.instance_id = Some("static-1".into());
        assert_eq!(member_id(&c), "static-1");
    }
}
