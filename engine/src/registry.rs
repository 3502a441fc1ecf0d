//! What this instance owns, for readers on other threads: each table
//! partition's reader and state (restoring with progress, or running), and
//! each task's counters.
//!
//! Written by workers on assignment, restore progress, commit and
//! revocation; read by queries and metrics. A lock rather than messages:
//! readers need a consistent snapshot of the map on demand, and writes are
//! rare (per commit, not per record).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use strata_state::store::RocksStore;
use strata_state::{Partition, PartitionReader};

use crate::partitioner::RouteCheck;
use crate::replay::{ReplayProgress, ReplayState};
use crate::task::TaskStats;

/// A table partition's state on this instance.
#[derive(Clone, Debug, PartialEq)]
pub enum PartitionState {
    /// Replaying its changelog; not queryable as current.
    Restoring {
        /// Changelog records read so far.
        records: u64,
        /// Records per second.
        rate: f64,
    },
    /// Up to date and processing.
    Running,
}

#[derive(Clone)]
pub(crate) struct Slot {
    pub reader: PartitionReader<RocksStore>,
    pub state: PartitionState,
}

/// Shared view of this instance's tasks and table partitions.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
    /// Per physical input topic, what its records say of its partitioner
    /// (set once when the app starts; the checks themselves are atomics).
    routes: Arc<RwLock<BTreeMap<String, Arc<RouteCheck>>>>,
    /// See [`Registry::key_scatters`].
    scatters: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Default)]
struct Inner {
    tables: BTreeMap<(String, u32), Slot>,
    tasks: BTreeMap<u32, TaskStats>,
    commit_latency_us: Vec<u64>,
    lag: BTreeMap<(String, u32), u64>,
    /// Changelog records a restoring table partition has still to read,
    /// when its changelog's end is known.
    restore_remaining: BTreeMap<(String, u32), u64>,
    /// Partitions whose task finished opening here (tables restored).
    assigned: BTreeSet<u32>,
    /// Exactly-once: tasks reopened after a failed commit, per partition.
    reopens: BTreeMap<u32, u64>,
    /// Exactly-once: changelog records a restore skipped because their
    /// transaction aborted.
    aborted_skipped: u64,
    /// Each task's last replay (running, done or cancelled), until the
    /// task closes or replays again.
    replays: BTreeMap<u32, ReplayProgress>,
}

impl Registry {
    /// Installs the partitioner checks of the input topics (at start).
    pub(crate) fn set_route_checks(&self, checks: BTreeMap<String, Arc<RouteCheck>>) {
        if let Ok(mut g) = self.routes.write() {
            *g = checks;
        }
    }

    /// What the records of physical input topic `topic` said of its
    /// partitioner on this instance.
    pub fn route_check(&self, topic: &str) -> Option<Arc<RouteCheck>> {
        self.routes.read().ok()?.get(topic).cloned()
    }

    /// Counts a point read that asked more than one partition for a key.
    pub fn count_key_scatter(&self) {
        self.scatters
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Point reads (Get, History) that asked more than one partition for a
    /// key: its partition could not be vouched for, or it was not in the
    /// one its hash names and the miss was confirmed.
    pub fn key_scatters(&self) -> u64 {
        self.scatters.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every input topic's partitioner check, by physical topic.
    pub fn route_checks(&self) -> Vec<Arc<RouteCheck>> {
        self.routes
            .read()
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn set_table(
        &self,
        table: &str,
        p: Partition,
        reader: PartitionReader<RocksStore>,
        state: PartitionState,
    ) {
        if let Ok(mut g) = self.inner.write() {
            if state == PartitionState::Running {
                g.restore_remaining.remove(&(table.to_string(), p.0));
            }
            g.tables
                .insert((table.to_string(), p.0), Slot { reader, state });
        }
    }

    pub(crate) fn set_state(&self, table: &str, p: Partition, state: PartitionState) {
        if let Ok(mut g) = self.inner.write() {
            if state == PartitionState::Running {
                g.restore_remaining.remove(&(table.to_string(), p.0));
            }
            if let Some(s) = g.tables.get_mut(&(table.to_string(), p.0)) {
                s.state = state;
            }
        }
    }

    /// Records how much a restoring table partition has left to read.
    pub(crate) fn set_restore_remaining(&self, table: &str, p: Partition, remaining: Option<u64>) {
        if let Ok(mut g) = self.inner.write() {
            let k = (table.to_string(), p.0);
            match remaining {
                Some(n) => g.restore_remaining.insert(k, n),
                None => g.restore_remaining.remove(&k),
            };
        }
    }

    /// Changelog records a restoring table partition has still to read,
    /// when known.
    pub fn restore_remaining(&self, table: &str, p: Partition) -> Option<u64> {
        let g = self.inner.read().ok()?;
        g.restore_remaining.get(&(table.to_string(), p.0)).copied()
    }

    /// The reader of a table partition owned here whatever its state (a
    /// restoring partition's reader sees what it has restored so far: a
    /// stale read).
    pub fn any_reader(
        &self,
        table: &str,
        p: Partition,
    ) -> Option<(PartitionReader<RocksStore>, PartitionState)> {
        let g = self.inner.read().ok()?;
        g.tables
            .get(&(table.to_string(), p.0))
            .map(|s| (s.reader.clone(), s.state.clone()))
    }

    pub(crate) fn remove_partition(&self, p: Partition) {
        if let Ok(mut g) = self.inner.write() {
            g.restore_remaining.retain(|(_, q), _| *q != p.0);
            g.tables.retain(|(_, q), _| *q != p.0);
            g.tasks.remove(&p.0);
            g.assigned.remove(&p.0);
            g.replays.remove(&p.0);
        }
    }

    /// Publishes a task's replay progress.
    pub(crate) fn set_replay(&self, progress: ReplayProgress) {
        if let Ok(mut g) = self.inner.write() {
            g.replays.insert(progress.partition.0, progress);
        }
    }

    /// The last replay of the task of partition `p` on this instance
    /// (running, done or cancelled), if any since the task opened here.
    pub fn replay(&self, p: Partition) -> Option<ReplayProgress> {
        let g = self.inner.read().ok()?;
        g.replays.get(&p.0).cloned()
    }

    /// Marks a partition's task open (its tables restored); undone by
    /// `remove_partition`.
    pub(crate) fn set_assigned(&self, p: Partition) {
        if let Ok(mut g) = self.inner.write() {
            g.assigned.insert(p.0);
        }
    }

    /// The input partitions whose task is open and processing here (for a
    /// topology without tables, the only record of what is owned here).
    pub fn assigned(&self) -> Vec<Partition> {
        let Ok(g) = self.inner.read() else {
            return Vec::new();
        };
        g.assigned.iter().map(|p| Partition(*p)).collect()
    }

    pub(crate) fn set_stats(&self, p: Partition, stats: TaskStats, commit_us: Option<u64>) {
        if let Ok(mut g) = self.inner.write() {
            g.tasks.insert(p.0, stats);
            if let Some(us) = commit_us {
                if g.commit_latency_us.len() >= 4096 {
                    g.commit_latency_us.remove(0);
                }
                g.commit_latency_us.push(us);
            }
        }
    }

    pub(crate) fn set_lag(&self, topic: &str, p: Partition, lag: u64) {
        if let Ok(mut g) = self.inner.write() {
            g.lag.insert((topic.to_string(), p.0), lag);
        }
    }

    /// Records not yet consumed, per input topic and partition (from the
    /// consumer's statistics, refreshed every second).
    pub fn lag(&self) -> BTreeMap<(String, Partition), u64> {
        let Ok(g) = self.inner.read() else {
            return BTreeMap::new();
        };
        g.lag
            .iter()
            .map(|((t, p), l)| ((t.clone(), Partition(*p)), *l))
            .collect()
    }

    /// The reader of a running table partition owned here.
    pub fn reader(&self, table: &str, p: Partition) -> Option<PartitionReader<RocksStore>> {
        let g = self.inner.read().ok()?;
        g.tables
            .get(&(table.to_string(), p.0))
            .filter(|s| s.state == PartitionState::Running)
            .map(|s| s.reader.clone())
    }

    /// Every table partition owned here, with its state.
    pub fn partitions(&self) -> Vec<(String, Partition, PartitionState)> {
        let Ok(g) = self.inner.read() else {
            return Vec::new();
        };
        g.tables
            .iter()
            .map(|((t, p), s)| (t.clone(), Partition(*p), s.state.clone()))
            .collect()
    }

    /// Counters of every task owned here.
    pub fn task_stats(&self) -> BTreeMap<Partition, TaskStats> {
        let Ok(g) = self.inner.read() else {
            return BTreeMap::new();
        };
        g.tasks
            .iter()
            .map(|(p, s)| (Partition(*p), s.clone()))
            .collect()
    }

    pub(crate) fn count_reopen(&self, p: Partition) {
        if let Ok(mut g) = self.inner.write() {
            *g.reopens.entry(p.0).or_default() += 1;
        }
    }

    pub(crate) fn count_aborted_skipped(&self, n: u64) {
        if let Ok(mut g) = self.inner.write() {
            g.aborted_skipped += n;
        }
    }

    /// Exactly-once: how often each partition's task was reopened after a
    /// failed commit (aborted transaction) on this instance.
    pub fn reopens(&self) -> BTreeMap<Partition, u64> {
        self.inner
            .read()
            .map(|g| g.reopens.iter().map(|(p, n)| (Partition(*p), *n)).collect())
            .unwrap_or_default()
    }

    /// Exactly-once: changelog records that restores on this instance
    /// skipped because their transaction aborted.
    pub fn aborted_records_skipped(&self) -> u64 {
        self.inner.read().map(|g| g.aborted_skipped).unwrap_or(0)
    }

    /// Recent commit latencies, in microseconds.
    pub fn commit_latencies_us(&self) -> Vec<u64> {
        self.inner
            .read()
            .map(|g| g.commit_latency_us.clone())
            .unwrap_or_default()
    }

    /// The counters in Prometheus' text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let stats = self.task_stats();
        let by_partition = |p: Partition| format!("partition=\"{}\"", p.0);
        for (name, help, get) in [
            (
                "strata_records_in_total",
                "Input records processed",
                (|s: &TaskStats| s.records_in) as fn(&TaskStats) -> u64,
            ),
            (
                "strata_records_out_total",
                "Records produced to outputs",
                |s| s.records_out,
            ),
            (
                "strata_poison_records_total",
                "Records skipped or dead-lettered",
                |s| s.poison,
            ),
            (
                "strata_changelog_records_total",
                "Changelog records written",
                |s| s.changelog_records,
            ),
            ("strata_commits_total", "Commits completed", |s| s.commits),
        ] {
            family(
                &mut out,
                name,
                "counter",
                help,
                stats.iter().map(|(p, s)| (by_partition(*p), get(s))),
            );
        }
        family(
            &mut out,
            "strata_consumer_lag",
            "gauge",
            "Records not yet consumed",
            self.lag()
                .into_iter()
                .map(|((t, p), l)| (format!("topic=\"{t}\",partition=\"{}\"", p.0), l)),
        );
        family(
            &mut out,
            "strata_task_reopens_total",
            "counter",
            "Tasks reopened after a failed exactly-once commit",
            self.reopens()
                .into_iter()
                .map(|(p, n)| (by_partition(p), n)),
        );
        family(
            &mut out,
            "strata_restore_aborted_records_total",
            "counter",
            "Changelog records of aborted transactions skipped by restores",
            [(String::new(), self.aborted_records_skipped())],
        );
        let mut lat = self.commit_latencies_us();
        if !lat.is_empty() {
            lat.sort_unstable();
            let q = |f: f64| lat[((lat.len() - 1) as f64 * f) as usize];
            family(
                &mut out,
                "strata_commit_latency_us",
                "summary",
                "Recent commit latency",
                [("0.5", 0.5), ("0.99", 0.99)]
                    .map(|(name, f)| (format!("quantile=\"{name}\""), q(f))),
            );
        }
        let replays: Vec<ReplayProgress> = self
            .inner
            .read()
            .map(|g| g.replays.values().cloned().collect())
            .unwrap_or_default();
        for (name, help, get) in [
            (
                "strata_replay_active",
                "Tasks replaying their input (1) or not (0)",
                (|r: &ReplayProgress| (r.state == ReplayState::Running) as u64)
                    as fn(&ReplayProgress) -> u64,
            ),
            (
                "strata_replay_records",
                "Input records processed by the task's last replay",
                |r| r.records,
            ),
            (
                "strata_replay_remaining",
                "Input records the task's replay has still to process",
                |r| r.remaining,
            ),
        ] {
            family(
                &mut out,
                name,
                "gauge",
                help,
                replays.iter().map(|r| (by_partition(r.partition), get(r))),
            );
        }
        let routes = self.route_checks();
        if !routes.is_empty() {
            let by_topic = |c: &RouteCheck| {
                format!(
                    "topic=\"{}\",partitioner=\"{}\"",
                    c.topic(),
                    c.declared().name()
                )
            };
            family(
                &mut out,
                "strata_partitioner_checked_records_total",
                "counter",
                "Keyed input records checked against their topic's declared partitioner",
                routes.iter().map(|c| (by_topic(c), c.checked())),
            );
            family(
                &mut out,
                "strata_query_key_scatters_total",
                "counter",
                "Point reads that asked every partition for a key (its partition not vouched for, or a miss confirmed)",
                [(String::new(), self.key_scatters())],
            );
            family(
                &mut out,
                "strata_partitioner_mismatched_records_total",
                "counter",
                "Keyed input records found in a partition other than the declared partitioner's (reads of the topic's tables then ask every partition)",
                routes.iter().map(|c| (by_topic(c), c.mismatched())),
            );
        }
        family(
            &mut out,
            "strata_table_restoring",
            "gauge",
            "Table partitions restoring (1) or running (0)",
            self.partitions().into_iter().map(|(t, p, state)| {
                (
                    format!("table=\"{t}\",partition=\"{}\"", p.0),
                    matches!(state, PartitionState::Restoring { .. }) as u64,
                )
            }),
        );
        out
    }
}

/// Writes one Prometheus metric family: its help and type, then a sample
/// per `(labels, value)` (labels as `k="v",...`; empty for none).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_state::Timestamp;

    fn progress(p: u32, state: ReplayState, records: u64, remaining: u64) -> ReplayProgress {
        ReplayProgress {
            partition: Partition(p),
            table: "t".into(),
            state,
            cut: Timestamp(0),
            seek: Vec::new(),
            until: Vec::new(),
            position: Vec::new(),
            records,
            remaining,
            rate: 0.0,
            started: Timestamp(0),
            ended: None,
        }
    }

    /// The exposition text, byte for byte: every family's help and type,
    /// one sample per partition, labels as Prometheus parses them.
    #[test]
    fn prometheus_exposition() {
        let r = Registry::default();
        let stats = |n: u64| TaskStats {
            records_in: n,
            records_out: n + 1,
            timer_firings: 0,
            timer_errors: 0,
            poison: n + 2,
            changelog_records: n + 3,
            commits: n + 4,
        };
        r.set_stats(Partition(0), stats(10), Some(100));
        r.set_stats(Partition(1), stats(20), Some(300));
        r.set_lag("in", Partition(1), 7);
        r.count_reopen(Partition(1));
        r.count_aborted_skipped(5);
        r.set_replay(progress(0, ReplayState::Running, 40, 60));
        r.set_replay(progress(1, ReplayState::Done, 9, 0));
        let got = r.prometheus();
        assert_eq!(got, EXPECTED);
    }

    const EXPECTED: &str = r#"# HELP strata_records_in_total Input records processed
# TYPE strata_records_in_total counter
strata_records_in_total{partition="0"} 10
strata_records_in_total{partition="1"} 20
# HELP strata_records_out_total Records produced to outputs
# TYPE strata_records_out_total counter
strata_records_out_total{partition="0"} 11
strata_records_out_total{partition="1"} 21
# HELP strata_poison_records_total Records skipped or dead-lettered
# TYPE strata_poison_records_total counter
strata_poison_records_total{partition="0"} 12
strata_poison_records_total{partition="1"} 22
# HELP strata_changelog_records_total Changelog records written
# TYPE strata_changelog_records_total counter
strata_changelog_records_total{partition="0"} 13
strata_changelog_records_total{partition="1"} 23
# HELP strata_commits_total Commits completed
# TYPE strata_commits_total counter
strata_commits_total{partition="0"} 14
strata_commits_total{partition="1"} 24
# HELP strata_consumer_lag Records not yet consumed
# TYPE strata_consumer_lag gauge
strata_consumer_lag{topic="in",partition="1"} 7
# HELP strata_task_reopens_total Tasks reopened after a failed exactly-once commit
# TYPE strata_task_reopens_total counter
strata_task_reopens_total{partition="1"} 1
# HELP strata_restore_aborted_records_total Changelog records of aborted transactions skipped by restores
# TYPE strata_restore_aborted_records_total counter
strata_restore_aborted_records_total 5
# HELP strata_commit_latency_us Recent commit latency
# TYPE strata_commit_latency_us summary
strata_commit_latency_us{quantile="0.5"} 100
strata_commit_latency_us{quantile="0.99"} 100
# HELP strata_replay_active Tasks replaying their input (1) or not (0)
# TYPE strata_replay_active gauge
strata_replay_active{partition="0"} 1
strata_replay_active{partition="1"} 0
# HELP strata_replay_records Input records processed by the task's last replay
# TYPE strata_replay_records gauge
strata_replay_records{partition="0"} 40
strata_replay_records{partition="1"} 9
# HELP strata_replay_remaining Input records the task's replay has still to process
# TYPE strata_replay_remaining gauge
strata_replay_remaining{partition="0"} 60
strata_replay_remaining{partition="1"} 0
# HELP strata_table_restoring Table partitions restoring (1) or running (0)
# TYPE strata_table_restoring gauge
"#;
}
