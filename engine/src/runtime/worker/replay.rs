//! Replay on the partition's worker: plans where a task's inputs stood at a
//! commit time (from the lineage of its tables' versions), rewinds every
//! table of the task to that time, seeks the inputs back, flags what it
//! processes until it passes where it was, and cancels.
//!
//! Invariants (specified in `docs/commit-protocol.md` §7):
//! - The cut is a commit time: every table of the task is rewound to its
//!   state at that time, so no table applies a replayed record twice.
//! - Each input topic is sought to one past the last input record that an
//!   included version of any table came from; the records between that and
//!   the commit's real position touched no table, so reprocessing them
//!   doubles nothing.
//! - Order: rewinds staged, positions set to the seek offsets, commit
//!   (offsets synchronously), then the consumer is sought. A crash after
//!   the commit resumes from the rewound position.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_state::{At, Granularity, KeyRange, Offset, Partition, RewindPlan, Timestamp, Version};

use super::commit::{Io, commit_task};
use super::env::{Owned, Replay, WorkerEnv};
use crate::replay::{ReplayOutcome, ReplayProgress, ReplayState, TopicPosition};
use crate::{Error, Result};

/// How often a running replay publishes its progress to the registry.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// How often a running replay logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// A planned replay: the rewinds and the positions.
struct Plan {
    cut: Timestamp,
    rewinds: Vec<(usize, RewindPlan)>,
    seek: BTreeMap<Arc<str>, Offset>,
    until: BTreeMap<Arc<str>, Offset>,
}

fn positions(m: &BTreeMap<Arc<str>, Offset>) -> Vec<TopicPosition> {
    m.iter()
        .map(|(t, o)| TopicPosition {
            topic: t.to_string(),
            offset: *o,
        })
        .collect()
}

impl Replay {
    /// Whether the record at `offset` of `topic` is replayed.
    pub fn covers(&self, topic: &str, offset: Offset) -> bool {
        self.progress.state == ReplayState::Running
            && self.until.get(topic).is_some_and(|u| offset < *u)
    }

    /// Counts one replayed record.
    pub fn count(&mut self) {
        self.progress.records += 1;
    }

    /// Refreshes the progress from the task's positions; publishes it
    /// (every `PUBLISH_EVERY`, and at once when it ends), logs it, and
    /// returns true when the replay just ended: every topic reached its
    /// `until` and the task has committed what it replayed (`pending`
    /// false), so what a reader sees once it is done includes the replay.
    pub fn update(
        &mut self,
        env: &WorkerEnv,
        at: &BTreeMap<Arc<str>, Offset>,
        pending: bool,
    ) -> bool {
        if self.progress.state != ReplayState::Running {
            return false;
        }
        let remaining: u64 = self
            .until
            .iter()
            .map(|(t, u)| u.0.saturating_sub(at.get(t).map_or(0, |o| o.0)))
            .sum();
        let done = remaining == 0 && !pending;
        let now = Instant::now();
        if !done && now.duration_since(self.last_publish) < PUBLISH_EVERY {
            return false;
        }
        self.last_publish = now;
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        self.progress.remaining = remaining;
        self.progress.rate = self.progress.records as f64 / elapsed;
        self.progress.position = positions(at);
        let p = &self.progress;
        if done {
            self.progress.state = ReplayState::Done;
            self.progress.ended = Some(Timestamp::now());
            let p = &self.progress;
            tracing::info!(partition = %p.partition, table = %p.table, records = p.records,
                elapsed_ms = self.started.elapsed().as_millis() as u64, "replay done");
        } else if now.duration_since(self.last_log) >= LOG_EVERY {
            self.last_log = now;
            let eta_s = (p.rate > 0.0).then(|| (remaining as f64 / p.rate) as u64);
            tracing::info!(partition = %p.partition, table = %p.table, records = p.records,
                rate = p.rate as u64, remaining, eta_s, "replaying");
        }
        env.registry.set_replay(self.progress.clone());
        done
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        self.progress.state == ReplayState::Running
    }

    /// Logs that the task is released while replaying: the next owner
    /// processes from the committed offsets without flagging.
    pub fn interrupted(&self) {
        if self.running() {
            let p = &self.progress;
            tracing::warn!(partition = %p.partition, table = %p.table, records = p.records,
                "replay interrupted: the task is released; its next owner processes the rest from the committed \
                 offsets, unflagged");
        }
    }
}

/// Plans (with `dry_run`) or starts a replay of the task `o` to `at` of
/// table `table`. The task's pending work is committed first (by the
/// caller). Nothing is changed when planning fails.
pub(super) fn start(
    env: &WorkerEnv,
    o: &mut Owned,
    table: usize,
    at: At,
    dry_run: bool,
) -> Result<(ReplayOutcome, Option<Replay>)> {
    let plan = plan(env, o, table, at)?;
    let p = o.task.partition;
    let name = |i: usize| env.tables.get(i).map(|t| t.0.clone()).unwrap_or_default();
    let mut progress = ReplayProgress {
        partition: p,
        table: name(table),
        state: ReplayState::Planned,
        cut: plan.cut,
        seek: positions(&plan.seek),
        until: positions(&plan.until),
        position: positions(&plan.seek),
        records: 0,
        remaining: plan
            .until
            .iter()
            .map(|(t, u)| u.0.saturating_sub(plan.seek.get(t).map_or(0, |s| s.0)))
            .sum(),
        rate: 0.0,
        started: Timestamp::now(),
        ended: None,
    };
    let outcome = |progress: ReplayProgress| ReplayOutcome {
        rewinds: plan
            .rewinds
            .iter()
            .map(|(i, r)| (name(*i), r.clone()))
            .collect(),
        progress,
    };
    if dry_run {
        return Ok((outcome(progress), None));
    }
    o.task.rewind_for_replay(&plan.rewinds, &env.emitters)?;
    o.task.set_positions(&plan.seek);
    let mut io = Io {
        writers: &mut o.writers,
        env,
        sync: true,
        txn: o.txn.as_mut(),
    };
    o.task.commit(&mut io, Timestamp::now())?;
    env.registry.set_stats(p, o.task.stats.clone(), None);
    // Durable: a crash from here on resumes from the seek offsets.
    seek(env, p, &plan.seek)?;
    progress.state = ReplayState::Running;
    tracing::info!(partition = %p, table = %progress.table, cut = plan.cut.0,
        seek = ?progress.seek, until = ?progress.until, remaining = progress.remaining, "replay started");
    let mut replay = Replay {
        progress: progress.clone(),
        until: plan.until.clone(),
        started: Instant::now(),
        last_publish: Instant::now(),
        last_log: Instant::now(),
    };
    replay.update(env, &plan.seek, false);
    env.registry.set_replay(replay.progress.clone());
    Ok((outcome(progress), Some(replay)))
}

/// Cancels a running replay: commits what it processed, then moves every
/// input topic still behind its `until` there (committed, then sought), so
/// nothing after the pre-replay position is processed twice.
pub(super) fn cancel(env: &WorkerEnv, o: &mut Owned, r: &mut Replay) -> Result<ReplayProgress> {
    if !r.running() {
        return Ok(r.progress.clone());
    }
    commit_task(env, o)?;
    let p = o.task.partition;
    let forward: BTreeMap<Arc<str>, Offset> = r
        .until
        .iter()
        .filter(|(t, u)| o.task.positions().get(*t).is_none_or(|at| at < *u))
        .map(|(t, u)| (t.clone(), *u))
        .collect();
    if !forward.is_empty() {
        o.task.set_positions(&forward);
        let mut io = Io {
            writers: &mut o.writers,
            env,
            sync: true,
            txn: o.txn.as_mut(),
        };
        o.task.commit(&mut io, Timestamp::now())?;
        seek(env, p, &forward)?;
    }
    r.progress.position = positions(o.task.positions());
    r.progress.remaining = 0;
    r.progress.state = ReplayState::Cancelled;
    r.progress.ended = Some(Timestamp::now());
    tracing::info!(partition = %p, table = %r.progress.table, records = r.progress.records,
        forward = ?positions(&forward), "replay cancelled");
    env.registry.set_replay(r.progress.clone());
    Ok(r.progress.clone())
}

/// Seeks the consumer's partition of each topic. librdkafka drops what it
/// fetched before the seek (a version barrier on the partition).
fn seek(env: &WorkerEnv, p: Partition, to: &BTreeMap<Arc<str>, Offset>) -> Result<()> {
    for (topic, o) in to {
        env.group.seek(topic, p, *o)?;
    }
    Ok(())
}

fn plan(env: &WorkerEnv, o: &Owned, table: usize, at: At) -> Result<Plan> {
    let p = o.task.partition;
    let topics = o.task.input_topics();
    if let Some(t) = topics.iter().find(|t| env.repartition.contains(&***t)) {
        return Err(Error::Precondition(format!(
            "partition {p} reads the repartition topic {t:?}: a replay would send re-keyed records to other \
             partitions' tasks again, whose tables would apply them twice; replay is not supported for \
             topologies with a repartition step (rewind without replay instead)"
        )));
    }
    let tables = &o.task.tables.tables;
    let chosen = tables
        .get(table)
        .ok_or_else(|| Error::Topology(format!("no table #{table}")))?;
    let reader = chosen.reader();
    let cut = match at {
        At::Time(t) => t,
        At::Latest => reader.last_commit_time(),
        At::Version(_) => {
            let v = reader.resolve(at)?;
            match reader.version_record(v)? {
                Some(rec) if v > Version::ZERO => rec.time,
                _ => {
                    return Err(Error::Precondition(format!(
                        "version {} of table {:?} partition {p} is before its first version: no input position \
                         is known there; pick a later target",
                        v.0,
                        chosen.config().name
                    )));
                }
            }
        }
    };
    let mut rewinds = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        rewinds.push((i, t.plan_rewind(At::Time(cut), &KeyRange::all())?));
    }
    // Where each topic stood: one past the last input record any table's
    // version at or before the cut came from.
    let mut found: BTreeMap<Arc<str>, Offset> = BTreeMap::new();
    for (i, t) in tables.iter().enumerate() {
        let target = rewinds[i].1.target;
        let per_commit = t.config().granularity == Granularity::PerCommit;
        for (topic, next) in lineage_positions(
            &t.reader(),
            target,
            &topics,
            p,
            per_commit,
            env.config.replay_lineage_scan,
        )? {
            let e = found.entry(topic).or_insert(next);
            *e = (*e).max(next);
        }
    }
    let missing: Vec<&str> = topics
        .iter()
        .filter(|t| !found.contains_key(*t))
        .map(|t| &**t)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Precondition(format!(
            "cannot tell where input topic(s) {missing:?} of partition {p} stood at the target (commit time {} ms): \
             no version of the task's tables at or before it (within replay_lineage_scan = {} versions each) \
             came from them; pick a later target, or rewind without replay",
            cut.0, env.config.replay_lineage_scan
        )));
    }
    // Where each topic is now: the task's position, or (nothing processed
    // since the task opened here) the group's committed offset.
    let mut until = BTreeMap::new();
    for t in &topics {
        let now = match o.task.positions().get(t) {
            Some(o) => *o,
            None => committed(env, t, p)?,
        };
        until.insert(t.clone(), now.max(found[t]));
    }
    for (t, o) in &found {
        let low = env.group.low_watermark(t, p)?.0;
        if o.0 < low {
            return Err(Error::InputNotRetained {
                topic: t.to_string(),
                partition: p.0,
                offset: o.0,
                earliest: low,
            });
        }
    }
    Ok(Plan {
        cut,
        rewinds,
        seek: found,
        until,
    })
}

/// The group's committed offset of `topic`/`p`.
fn committed(env: &WorkerEnv, topic: &str, p: Partition) -> Result<Offset> {
    let got = env.group.committed(&[topic.to_string()], p)?;
    match got.into_iter().find(|(t, _)| t == topic).map(|(_, o)| o) {
        Some(o) => Ok(o),
        _ => Err(Error::Precondition(format!(
            "partition {p} has no position in {topic:?} yet (nothing processed or committed); retry once it has \
             processed a record"
        ))),
    }
}

/// For each of `topics`, one past the offset of the last input record of
/// partition `p` that a version at or before `target` came from, reading
/// at most `max` versions backwards. Under per-commit granularity a key's
/// versions within a commit are not in input order, so the largest offset
/// of the run of versions sharing the found version's commit time counts
/// (a rewind's versions end the run: they separate two passes over the
/// input).
fn lineage_positions<S: strata_state::store::KvStore>(
    reader: &strata_state::PartitionReader<S>,
    target: Version,
    topics: &[Arc<str>],
    p: Partition,
    per_commit: bool,
    max: usize,
) -> Result<BTreeMap<Arc<str>, Offset>> {
    // topic -> (next offset, commit time of the run it was found in)
    let mut found: BTreeMap<Arc<str>, (Offset, Timestamp)> = BTreeMap::new();
    let mut v = target.0;
    let mut read = 0usize;
    while v > 0 && read < max {
        let Some((rec, lineage)) = reader.version_lineage(Version(v))? else {
            break; // pruned: nothing older is left
        };
        read += 1;
        v -= 1;
        let open = |f: &BTreeMap<Arc<str>, (Offset, Timestamp)>| {
            per_commit && f.values().any(|(_, t)| *t == rec.time)
        };
        if rec.flags.is_rewind() {
            if found.len() == topics.len() {
                break;
            }
            // Runs found so far end here.
            for (_, (_, t)) in found.iter_mut() {
                *t = Timestamp(u64::MAX);
            }
            continue;
        }
        if found.len() == topics.len() && !open(&found) {
            break;
        }
        let Some(l) = lineage else { continue };
        if l.partition != p {
            continue;
        }
        let Some(topic) = topics.iter().find(|t| ***t == *l.topic) else {
            continue;
        };
        let next = Offset(l.offset.0 + 1);
        match found.get_mut(topic) {
            None => {
                found.insert(topic.clone(), (next, rec.time));
            }
            Some((o, t)) if per_commit && *t == rec.time => *o = (*o).max(next),
            Some(_) => {}
        }
    }
    Ok(found.into_iter().map(|(t, (o, _))| (t, o)).collect())
}
