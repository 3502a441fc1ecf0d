//! A task: the unit of work for one input partition. It owns that
//! partition's table partitions, runs records through the topology, and
//! commits.
//!
//! A task is driven by exactly one thread (`&mut self` everywhere), so its
//! state needs no locks. The commit protocol (at-least-once) is, in order:
//! each table's staged mutations are prepared and appended to its changelog
//! (acknowledged), outputs and dead letters are produced (acknowledged),
//! the tables are applied to the store with their changelog offsets and
//! input positions in one atomic write each, and only then are input
//! offsets committed. Offsets are never committed ahead of their effects.
//! Under exactly-once the same steps run inside one Kafka transaction, and
//! the tables are applied after the offsets, once it committed
//! (docs/commit-protocol.md §8).

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_state::store::KvStore;
use strata_state::{
    ChangelogWriter, InputOffset, Lineage, Offset, Partition, TablePartition, Timestamp,
    VersionFlags,
};

use crate::context::{Ctx, OutRecord, RecordMeta, SOURCE_HEADER, TableAccess};
use crate::topology::{ChangeFn, OnError, RecordError, SourceFn, TableId, TimerSpec};
use crate::{Error, Result};

/// Header carrying the error of a dead-lettered record.
pub const ERROR_HEADER: &str = "strata-error";

/// A source as a task runs it.
#[derive(Clone)]
pub(crate) struct TaskSource {
    pub run: SourceFn,
    pub on_error: OnError,
    /// The topic's partitioner check, shared by every task of the instance
    /// (`None` in the test driver, which places records itself).
    pub route: Option<Arc<crate::partitioner::RouteCheck>>,
}

/// The sources of a topology keyed by physical input topic.
pub(crate) type SourceMap = Arc<BTreeMap<String, Vec<TaskSource>>>;

/// A task's table partitions, indexed by [`TableId`].
pub(crate) struct TaskTables<S: KvStore> {
    pub tables: Vec<TablePartition<S>>,
}

impl<S: KvStore> TableAccess for TaskTables<S> {
    fn get(&mut self, table: TableId, key: &[u8]) -> strata_state::Result<Option<Vec<u8>>> {
        self.tables[table.0].read(key)
    }

    fn get_at(
        &mut self,
        table: TableId,
        key: &[u8],
        time: Timestamp,
    ) -> strata_state::Result<Option<Vec<u8>>> {
        Ok(self.tables[table.0]
            .reader()
            .get_at(key, strata_state::At::Time(time))?
            .map(|v| v.value))
    }

    fn put(
        &mut self,
        table: TableId,
        key: &[u8],
        value: Option<Vec<u8>>,
        lineage: Option<Lineage>,
        replay: bool,
    ) {
        let flags = if replay {
            VersionFlags::REPLAY
        } else {
            VersionFlags::NONE
        };
        self.tables[table.0].stage_owned(key, value, lineage, flags);
    }
}

/// One raw input record, borrowed from the consumer.
pub(crate) struct RawRecord<'a> {
    pub topic: &'a Arc<str>,
    pub partition: Partition,
    pub offset: Offset,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Counters of one task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Input records processed.
    pub records_in: u64,
    /// Records produced to output topics, dead letters included.
    pub records_out: u64,
    /// Timer firings.
    pub timer_firings: u64,
    /// Timer firings that returned an error.
    pub timer_errors: u64,
    /// Records skipped or dead-lettered.
    pub poison: u64,
    /// Changelog records written.
    pub changelog_records: u64,
    /// Commits completed.
    pub commits: u64,
}

/// What a commit needs from the outside world.
pub(crate) trait CommitIo {
    /// The changelog of table `i` of this task.
    fn changelog(&mut self, table: usize) -> &mut dyn ChangelogWriter;
    /// Produces records (logical topics), returning once all are acknowledged.
    fn produce(&mut self, records: &[OutRecord]) -> Result<()>;
    /// Commits input positions (next offsets to read). Under exactly-once,
    /// adds them to the transaction and commits it.
    fn commit_offsets(&mut self, positions: &[InputOffset]) -> Result<()>;
    /// Starts a commit (exactly-once: begins its transaction).
    fn begin(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether commits are transactions (exactly-once): then local state is
    /// applied after the offsets, once the transaction committed.
    fn transactional(&self) -> bool {
        false
    }
}

/// One input partition's work.
pub(crate) struct Task<S: KvStore> {
    pub partition: Partition,
    sources: SourceMap,
    pub tables: TaskTables<S>,
    outputs: Vec<OutRecord>,
    trace: Vec<Arc<str>>,
    /// Next offset to read, per physical input topic.
    positions: BTreeMap<Arc<str>, Offset>,
    /// The first offset processed, per physical input topic.
    first: BTreeMap<Arc<str>, Offset>,
    /// Positions not yet committed.
    dirty: bool,
    dlq_topic: Arc<str>,
    pub stats: TaskStats,
    /// Whether records are being replayed (flagged in outputs and versions).
    pub replay: bool,
    /// Timers with their next firing.
    timers: Vec<(TimerSpec, Option<Timestamp>)>,
}

impl<S: KvStore> Task<S> {
    pub fn new(
        partition: Partition,
        sources: SourceMap,
        tables: Vec<TablePartition<S>>,
        dlq_topic: Arc<str>,
    ) -> Task<S> {
        Task {
            partition,
            sources,
            tables: TaskTables { tables },
            outputs: Vec::new(),
            trace: Vec::new(),
            positions: BTreeMap::new(),
            first: BTreeMap::new(),
            dirty: false,
            dlq_topic,
            stats: TaskStats::default(),
            replay: false,
            timers: Vec::new(),
        }
    }

    /// Stages a rewind of table `table` to `at` (optionally a key range)
    /// and sends the resulting changes downstream of the table, flagged as
    /// a rewind. Commit to make it durable.
    pub fn rewind(
        &mut self,
        table: usize,
        emit: &ChangeFn,
        at: strata_state::At,
        range: &strata_state::KeyRange,
    ) -> Result<strata_state::RewindPlan> {
        let t = self
            .tables
            .tables
            .get_mut(table)
            .ok_or_else(|| Error::Topology(format!("no table #{table}")))?;
        let plan = t.rewind(at, range)?;
        self.dirty = true;
        self.emit_rewound(table, &plan, emit)?;
        Ok(plan)
    }

    /// Sends a rewind plan's changes downstream of table `table`, flagged
    /// as a rewind (outputs carry `strata-rewind: 1`, table writes no
    /// lineage).
    fn emit_rewound(
        &mut self,
        table: usize,
        plan: &strata_state::RewindPlan,
        emit: &ChangeFn,
    ) -> Result<()> {
        let meta = RecordMeta {
            topic: Arc::from(format!(
                "rewind:{}",
                self.tables.tables[table].config().name
            )),
            partition: self.partition,
            offset: Offset(plan.target.0),
            timestamp: None,
            replay: false,
            rewind: true,
            from_input: false,
        };
        for change in &plan.changes {
            self.trace.clear();
            let mut ctx = Ctx::new(&mut self.tables, &mut self.outputs, &meta, &mut self.trace);
            let value = change.before.as_ref().map(|v| v.value.as_slice());
            emit(&mut ctx, &change.key, value).map_err(|e| {
                Error::Topology(format!("sending a rewound change downstream: {e}"))
            })?;
        }
        Ok(())
    }

    /// Stages the rewinds of a replay: every plan's changes are sent
    /// downstream of its table, flagged as a rewind (so outputs carry
    /// `strata-rewind: 1`), then whatever that staged in the task's tables
    /// is dropped and each plan is staged as planned. A table fed by
    /// another's changes is rewound to the same point itself, so it must not
    /// also apply the rewound changes flowing into it. On an error nothing
    /// stays staged or buffered. Commit to make it durable.
    pub fn rewind_for_replay(
        &mut self,
        plans: &[(usize, strata_state::RewindPlan)],
        emitters: &[ChangeFn],
    ) -> Result<()> {
        let buffered = self.outputs.len();
        let r = self.stage_replay_rewinds(plans, emitters);
        if r.is_err() {
            self.outputs.truncate(buffered);
            for t in &mut self.tables.tables {
                t.discard_staged();
            }
        }
        r
    }

    fn stage_replay_rewinds(
        &mut self,
        plans: &[(usize, strata_state::RewindPlan)],
        emitters: &[ChangeFn],
    ) -> Result<()> {
        for (table, plan) in plans {
            let (true, Some(emit)) = (*table < self.tables.tables.len(), emitters.get(*table))
            else {
                return Err(Error::Topology(format!("no table #{table}")));
            };
            self.emit_rewound(*table, plan, emit)?;
        }
        for t in &mut self.tables.tables {
            t.discard_staged();
        }
        for (table, plan) in plans {
            self.tables.tables[*table].stage_plan(plan)?;
        }
        self.dirty = true;
        Ok(())
    }

    /// Arms the topology's timers, first firing after `now`.
    pub fn set_timers(&mut self, timers: &[TimerSpec], now: Timestamp) {
        self.timers = timers
            .iter()
            .map(|t| (t.clone(), t.schedule.next_after(now)))
            .collect();
    }

    /// Fires every timer due at `now` (once each, however late: missed
    /// firings are not replayed), then schedules its next firing.
    pub fn fire_timers(&mut self, now: Timestamp) {
        for i in 0..self.timers.len() {
            let due = matches!(self.timers[i].1, Some(t) if t <= now);
            if !due {
                continue;
            }
            let spec = self.timers[i].0.clone();
            let meta = RecordMeta {
                topic: Arc::from(format!("timer:{}", spec.name)),
                partition: self.partition,
                offset: Offset(self.stats.timer_firings),
                timestamp: Some(now.0 as i64),
                replay: self.replay,
                rewind: false,
                from_input: false,
            };
            self.trace.clear();
            self.trace.push(spec.name.clone());
            let mut ctx = Ctx::new(&mut self.tables, &mut self.outputs, &meta, &mut self.trace);
            self.stats.timer_firings += 1;
            self.dirty = true;
            if let Err(e) = (spec.run)(&mut ctx, now) {
                self.stats.timer_errors += 1;
                tracing::warn!(timer = %spec.name, partition = %self.partition, error = %e, "timer failed");
            }
            self.timers[i].1 = spec.schedule.next_after(now);
        }
    }

    /// Whether enough is buffered that the task should commit now.
    pub fn is_full(&self, max_outputs: usize) -> bool {
        self.outputs.len() >= max_outputs || self.tables.tables.iter().any(|t| t.is_full())
    }

    /// Whether anything awaits a commit.
    pub fn has_pending(&self) -> bool {
        self.dirty
            || !self.outputs.is_empty()
            || self.tables.tables.iter().any(|t| t.staged_len() > 0)
    }

    /// Runs one record through the topology. Poison records follow their
    /// source's policy; only [`OnError::Stop`] returns an error.
    pub fn process(&mut self, rec: &RawRecord<'_>) -> Result<()> {
        let meta = RecordMeta {
            topic: rec.topic.clone(),
            partition: rec.partition,
            offset: rec.offset,
            timestamp: rec.timestamp,
            replay: self.replay,
            rewind: false,
            from_input: true,
        };
        // Per record: update in place; a topic's first record inserts.
        let next = Offset(rec.offset.0 + 1);
        match self.positions.get_mut(&**rec.topic) {
            Some(o) => *o = next,
            None => {
                self.positions.insert(rec.topic.clone(), next);
            }
        }
        if !self.first.contains_key(&**rec.topic) {
            self.first.insert(rec.topic.clone(), rec.offset);
        }
        self.dirty = true;
        self.stats.records_in += 1;
        let sources = self.sources.clone();
        let Some(list) = sources.get(&**rec.topic) else {
            return Err(Error::Topology(format!(
                "task {} got a record of unknown topic {}",
                self.partition, rec.topic
            )));
        };
        if let Some(check) = list.first().and_then(|s| s.route.as_ref()) {
            check.record(rec.key, rec.partition);
        }
        for src in list {
            self.trace.clear();
            let mut ctx = Ctx::new(&mut self.tables, &mut self.outputs, &meta, &mut self.trace);
            if let Err(e) = (src.run)(&mut ctx, rec.key, rec.value) {
                self.poison(rec, &src.on_error, e)?;
            }
        }
        Ok(())
    }

    fn poison(&mut self, rec: &RawRecord<'_>, policy: &OnError, e: RecordError) -> Result<()> {
        self.stats.poison += 1;
        let (topic, partition, offset) = (
            rec.topic.to_string(),
            rec.partition.0 as i32,
            rec.offset.0 as i64,
        );
        match policy {
            OnError::Stop => Err(Error::Poison {
                topic,
                partition,
                offset,
                reason: e.to_string(),
            }),
            OnError::Skip => {
                tracing::warn!(%topic, partition, offset, error = %e, "skipping poison record");
                Ok(())
            }
            OnError::DeadLetter | OnError::DeadLetterTo(_) => {
                let dlq = match policy {
                    OnError::DeadLetterTo(t) => Arc::from(t.as_str()),
                    _ => self.dlq_topic.clone(),
                };
                tracing::warn!(%topic, partition, offset, error = %e, dlq = %dlq, "dead-lettering poison record");
                self.outputs.push(OutRecord {
                    topic: dlq,
                    key: rec.key.map(<[u8]>::to_vec),
                    value: rec.value.map(<[u8]>::to_vec),
                    headers: vec![
                        (ERROR_HEADER.to_string(), e.to_string().into_bytes()),
                        (
                            SOURCE_HEADER.to_string(),
                            format!("{topic}/{partition}@{offset}").into_bytes(),
                        ),
                    ],
                });
                Ok(())
            }
        }
    }

    /// The first offset this task processed, per input topic: where a
    /// reopened task must start reading a topic nothing was committed for.
    pub fn first_offsets(&self) -> Vec<(String, Offset)> {
        self.first
            .iter()
            .map(|(t, o)| (t.to_string(), *o))
            .collect()
    }

    /// The input positions (next offsets to read) of everything processed
    /// so far; after a commit, what that commit recorded.
    pub fn input_positions(&self) -> Vec<InputOffset> {
        self.positions
            .iter()
            .map(|(t, o)| InputOffset {
                topic: t.to_string(),
                partition: self.partition,
                next: *o,
            })
            .collect()
    }

    /// The physical input topics of the task.
    pub fn input_topics(&self) -> Vec<Arc<str>> {
        self.sources.keys().map(|t| Arc::from(t.as_str())).collect()
    }

    /// The next offset to read of each input topic processed so far.
    pub fn positions(&self) -> &BTreeMap<Arc<str>, Offset> {
        &self.positions
    }

    /// Moves the task's positions (a replay seeking its inputs back, or a
    /// cancelled one forward): the next commit records and commits them.
    /// The caller seeks the consumer after that commit.
    pub fn set_positions(&mut self, positions: &BTreeMap<Arc<str>, Offset>) {
        for (t, o) in positions {
            self.positions.insert(t.clone(), *o);
        }
        self.dirty = true;
    }

    /// Commits everything processed so far (at-least-once).
    pub fn commit(&mut self, io: &mut dyn CommitIo, now: Timestamp) -> Result<()> {
        if !self.has_pending() {
            return Ok(());
        }
        let inputs: Vec<InputOffset> = self
            .positions
            .iter()
            .map(|(t, o)| InputOffset {
                topic: t.to_string(),
                partition: self.partition,
                next: *o,
            })
            .collect();
        let transactional = io.transactional();
        io.begin()?;
        // 1. Changelogs, acknowledged.
        let mut prepared = Vec::with_capacity(self.tables.tables.len());
        let mut failed = None;
        for (i, t) in self.tables.tables.iter_mut().enumerate() {
            let p = match t.prepare(now) {
                Ok(p) => p,
                Err(e) => {
                    failed = Some(Error::from(e));
                    break;
                }
            };
            match io.changelog(i).append_encoded(p.records(), p.payloads()) {
                Ok(offsets) => {
                    self.stats.changelog_records += offsets.len() as u64;
                    prepared.push((i, p, offsets));
                }
                Err(e) => {
                    t.abandon_unknown(p);
                    failed = Some(e.into());
                    break;
                }
            }
        }
        // Crash points of the fault suite (tests/faults.rs); compiled in
        // only with the `failpoints` feature, inert unless configured.
        fail::fail_point!("commit-after-changelog", failed.is_none(), |_| crash(
            "commit-after-changelog"
        ));
        // 2. Outputs and dead letters, acknowledged.
        if failed.is_none() && !self.outputs.is_empty() {
            match io.produce(&self.outputs) {
                Ok(()) => {
                    self.stats.records_out += self.outputs.len() as u64;
                    self.outputs.clear();
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            // Appended records may have landed: every table whose commit
            // did not complete must catch up with its changelog first.
            for (i, p, _) in prepared {
                self.tables.tables[i].abandon_unknown(p);
            }
            return Err(e);
        }
        if transactional {
            // 3. Input offsets, and the transaction commits: changelogs,
            // outputs and offsets become visible together.
            if let Err(e) = io.commit_offsets(&inputs) {
                for (i, p, _) in prepared {
                    self.tables.tables[i].abandon_unknown(p);
                }
                return Err(e);
            }
            fail::fail_point!("commit-before-state", |_| crash("commit-before-state"));
            // 4. Local state, only now that the transaction committed.
            for (i, p, offsets) in prepared {
                self.tables.tables[i].apply(p, &offsets, &inputs)?;
            }
        } else {
            fail::fail_point!("commit-before-state", |_| crash("commit-before-state"));
            // 3. Local state with its checkpoint.
            for (i, p, offsets) in prepared {
                self.tables.tables[i].apply(p, &offsets, &inputs)?;
            }
            fail::fail_point!("commit-before-offsets", |_| crash("commit-before-offsets"));
            // 4. Input offsets.
            io.commit_offsets(&inputs)?;
        }
        self.dirty = false;
        self.stats.commits += 1;
        Ok(())
    }
}

/// A crash at a failpoint: the whole process, at once, as kill -9 would.
#[cfg(feature = "failpoints")]
pub(crate) fn crash(point: &str) -> ! {
    eprintln!("failpoint {point}: aborting the process");
    std::process::abort()
}
