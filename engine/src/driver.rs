//! A deterministic, in-process driver for testing topologies without a
//! broker (like Kafka Streams' `TopologyTestDriver`): pipe records in,
//! advance time, commit, read outputs and tables with their versions, and
//! simulate a crash and restart.
//!
//! It runs the same task code as the engine, over in-memory stores and
//! changelogs. Time is an input: nothing reads the wall clock.
//!
//! It has no replay (`RunningApp::replay`): it has no consumer to seek. To
//! test a fix, drive the same input through a driver built with the fixed
//! topology.

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_state::store::MemoryStore;
use strata_state::{
    ChangelogWriter, InputOffset, MemoryChangelog, Offset, Partition, PartitionReader, TableName,
    TablePartition, Timestamp,
};

use crate::context::OutRecord;
use crate::partitioner::{Partitioner, partition_for};
use crate::task::{CommitIo, RawRecord, Task};
use crate::topology::{Compiled, Topology};
use crate::{Error, Result};

/// Most rounds of commit-then-feed-repartitioned-records per `commit`.
const MAX_ROUNDS: usize = 100;

/// A record as it sits in an in-memory topic.
#[derive(Clone, Debug)]
struct Stored {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: i64,
}

/// Drives a topology deterministically, in memory.
pub struct TestDriver {
    /// The topology as it runs (topic names are logical here).
    compiled: Compiled,
    partitions: u32,
    app: String,
    now: Timestamp,
    /// Input topics: per partition, every record piped.
    inputs: BTreeMap<String, Vec<Vec<Stored>>>,
    /// Next offset to process / committed, per (topic, partition).
    processed: BTreeMap<(String, u32), u64>,
    committed: BTreeMap<(String, u32), u64>,
    outputs: BTreeMap<String, Vec<OutRecord>>,
    /// Per table: per partition, its store and changelog (they survive restarts).
    stores: Vec<Vec<(MemoryStore, MemoryChangelog)>>,
    tasks: Vec<Task<MemoryStore>>,
    /// Per internal (repartition) topic: output records already fed back.
    fed: BTreeMap<String, usize>,
    /// Per input topic, the partitioner [`TestDriver::pipe`] places keys
    /// with, as the topic's producers would (default murmur2).
    partitioners: BTreeMap<String, Partitioner>,
}

struct Io<'a> {
    changelogs: Vec<&'a mut MemoryChangelog>,
    outputs: &'a mut BTreeMap<String, Vec<OutRecord>>,
    committed: &'a mut BTreeMap<(String, u32), u64>,
}

impl CommitIo for Io<'_> {
    fn changelog(&mut self, table: usize) -> &mut dyn ChangelogWriter {
        &mut *self.changelogs[table]
    }
    fn produce(&mut self, records: &[OutRecord]) -> Result<()> {
        for r in records {
            self.outputs
                .entry(r.topic.to_string())
                .or_default()
                .push(r.clone());
        }
        Ok(())
    }
    fn commit_offsets(&mut self, positions: &[InputOffset]) -> Result<()> {
        for p in positions {
            self.committed
                .insert((p.topic.clone(), p.partition.0), p.next.0);
        }
        Ok(())
    }
}

impl TestDriver {
    /// A driver for `topology` whose input topics have `partitions`
    /// partitions, starting at time `start`.
    pub fn new(topology: Topology, partitions: u32, start: Timestamp) -> Result<TestDriver> {
        let compiled = topology.compile(str::to_string)?;
        if partitions == 0 {
            return Err(Error::config("partitions", "must be at least 1"));
        }
        let tables = compiled.tables.len();
        let mut d = TestDriver {
            inputs: topology
                .source_topics()
                .into_iter()
                .map(|t| (t, vec![Vec::new(); partitions as usize]))
                .collect(),
            compiled,
            partitions,
            app: "test-driver".into(),
            now: start,
            processed: BTreeMap::new(),
            committed: BTreeMap::new(),
            outputs: BTreeMap::new(),
            stores: (0..tables)
                .map(|_| {
                    (0..partitions)
                        .map(|_| (MemoryStore::new(), MemoryChangelog::new()))
                        .collect()
                })
                .collect(),
            tasks: Vec::new(),
            fed: BTreeMap::new(),
            partitioners: BTreeMap::new(),
        };
        d.start_tasks()?;
        Ok(d)
    }

    fn start_tasks(&mut self) -> Result<()> {
        let sources = self.compiled.task_sources(|_| None);
        let dlq: Arc<str> = Arc::from(format!("{}-dlq", self.app));
        self.tasks.clear();
        for p in 0..self.partitions {
            let mut tables = Vec::new();
            for (i, spec) in self.compiled.tables.iter().enumerate() {
                let cfg = spec
                    .options
                    .table_config(TableName::new(spec.name.clone())?, Partition(p));
                let (store, log) = &mut self.stores[i][p as usize];
                let mut t = TablePartition::open(store.clone(), cfg)?;
                // Catch up with the changelog tail, as a restarted owner would.
                t.restore_from(log, 10_000, &mut |_| {})?;
                tables.push(t);
            }
            let mut task = Task::new(Partition(p), sources.clone(), tables, dlq.clone());
            task.set_timers(&self.compiled.timers, self.now);
            self.tasks.push(task);
        }
        Ok(())
    }

    /// Places the keys [`TestDriver::pipe`] sends to input topic `topic` as
    /// `partitioner` does, like a producer of the topic that uses it (the
    /// app's [`crate::AppConfig::partitioners`] declaration).
    pub fn set_partitioner(&mut self, topic: &str, partitioner: Partitioner) -> &mut Self {
        self.partitioners.insert(topic.to_string(), partitioner);
        self
    }

    /// The partition a key goes to under Kafka's default partitioner
    /// (murmur2), as the engine's own producers place it.
    pub fn partition_of(&self, key: &[u8]) -> Partition {
        partition_for(key, self.partitions)
    }

    /// The partition `key` goes to in input topic `topic`, under the topic's
    /// partitioner (see [`TestDriver::set_partitioner`]); `None` when that is
    /// [`Partitioner::Unknown`] (use [`TestDriver::pipe_to`]).
    pub fn partition_in(&self, topic: &str, key: &[u8]) -> Option<Partition> {
        self.partitioners
            .get(topic)
            .cloned()
            .unwrap_or_default()
            .partition(key, self.partitions)
    }

    fn placed(&self, topic: &str, key: &[u8]) -> Result<Partition> {
        self.partition_in(topic, key).ok_or_else(|| {
            Error::config(
                format!("partitioners[{topic:?}]"),
                "the topic's partitioner cannot place a key: pipe with TestDriver::pipe_to and an explicit partition",
            )
        })
    }

    /// Appends a record to an input topic (partitioned by its key, see
    /// [`TestDriver::set_partitioner`]) and processes it. Returns the
    /// partition and offset it got.
    pub fn pipe(&mut self, topic: &str, key: &[u8], value: &[u8]) -> Result<(Partition, Offset)> {
        let p = self.placed(topic, key)?;
        self.pipe_to(topic, p, Some(key.to_vec()), Some(value.to_vec()))
    }

    /// Like [`TestDriver::pipe`], with an explicit record timestamp.
    pub fn pipe_at(
        &mut self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp: Timestamp,
    ) -> Result<(Partition, Offset)> {
        let p = self.placed(topic, key)?;
        self.append(
            topic,
            p,
            Some(key.to_vec()),
            Some(value.to_vec()),
            timestamp.0 as i64,
        )
    }

    /// Appends a record to a given partition and processes it.
    pub fn pipe_to(
        &mut self,
        topic: &str,
        p: Partition,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> Result<(Partition, Offset)> {
        let now = self.now.0 as i64;
        self.append(topic, p, key, value, now)
    }

    fn append(
        &mut self,
        topic: &str,
        p: Partition,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        timestamp: i64,
    ) -> Result<(Partition, Offset)> {
        let parts = self.inputs.get_mut(topic).ok_or_else(|| {
            Error::Topology(format!("{topic:?} is not an input topic of the topology"))
        })?;
        let log = parts
            .get_mut(p.0 as usize)
            .ok_or_else(|| Error::config("partition", format!("{p} out of range")))?;
        log.push(Stored {
            key,
            value,
            timestamp,
        });
        let offset = Offset(log.len() as u64 - 1);
        self.run_pending(topic, p)?;
        Ok((p, offset))
    }

    fn run_pending(&mut self, topic: &str, p: Partition) -> Result<()> {
        let key = (topic.to_string(), p.0);
        let from = *self
            .processed
            .get(&key)
            .or(self.committed.get(&key))
            .unwrap_or(&0);
        let records = &self.inputs[topic][p.0 as usize];
        let topic_arc: Arc<str> = Arc::from(topic);
        let task = &mut self.tasks[p.0 as usize];
        for (i, r) in records.iter().enumerate().skip(from as usize) {
            let raw = RawRecord {
                topic: &topic_arc,
                partition: p,
                offset: Offset(i as u64),
                timestamp: Some(r.timestamp),
                key: r.key.as_deref(),
                value: r.value.as_deref(),
            };
            task.process(&raw)?;
            self.processed.insert(key.clone(), i as u64 + 1);
        }
        Ok(())
    }

    /// Moves the clock on and fires the timers that became due.
    pub fn advance_time(&mut self, ms: u64) {
        self.now = Timestamp(self.now.0 + ms);
        for t in &mut self.tasks {
            t.fire_timers(self.now);
        }
    }

    /// The driver's clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Commits every task at the current time. Records committed to a
    /// repartition topic are then consumed, as the app would, and their
    /// effects committed too (until no repartitioned record is left).
    pub fn commit(&mut self) -> Result<()> {
        let now = self.now;
        for _round in 0..MAX_ROUNDS {
            for task in &mut self.tasks {
                let p = task.partition.0 as usize;
                let changelogs: Vec<&mut MemoryChangelog> =
                    self.stores.iter_mut().map(|per| &mut per[p].1).collect();
                let mut io = Io {
                    changelogs,
                    outputs: &mut self.outputs,
                    committed: &mut self.committed,
                };
                task.commit(&mut io, now)?;
            }
            let mut fed_any = false;
            let internal: Vec<String> = self.compiled.internal.iter().cloned().collect();
            for topic in internal {
                let from = self.fed.get(&topic).copied().unwrap_or(0);
                let records: Vec<OutRecord> =
                    self.output(&topic).get(from..).unwrap_or(&[]).to_vec();
                self.fed.insert(topic.clone(), from + records.len());
                for r in records {
                    let p = partition_for(r.key.as_deref().unwrap_or(&[]), self.partitions);
                    self.pipe_to(&topic, p, r.key, r.value)?;
                    fed_any = true;
                }
            }
            if !fed_any {
                return Ok(());
            }
        }
        Err(Error::Topology(format!(
            "repartitioned records still flowing after {MAX_ROUNDS} commit rounds: a cycle?"
        )))
    }

    /// Simulates a crash and restart: uncommitted work is lost, tables are
    /// reopened from their stores and changelogs, and input is reprocessed
    /// from the committed offsets.
    pub fn restart(&mut self) -> Result<()> {
        self.tasks.clear();
        self.processed.clear();
        self.start_tasks()?;
        let keys: Vec<(String, u32)> = self
            .inputs
            .iter()
            .flat_map(|(t, ps)| (0..ps.len() as u32).map(move |p| (t.clone(), p)))
            .collect();
        for (t, p) in keys {
            self.run_pending(&t, Partition(p))?;
        }
        Ok(())
    }

    /// Rewinds one partition of a table to `at` (or a key range of it),
    /// sends the changes downstream flagged as a rewind, and commits.
    pub fn rewind(
        &mut self,
        table: &str,
        partition: Partition,
        at: strata_state::At,
        range: &strata_state::KeyRange,
    ) -> Result<strata_state::RewindPlan> {
        let i = self
            .table_index(table)
            .ok_or_else(|| Error::Topology(format!("no table named {table:?}")))?;
        let emit = self.compiled.tables[i].emit_change.clone();
        self.commit()?;
        let task = self
            .tasks
            .get_mut(partition.0 as usize)
            .ok_or_else(|| Error::config("partition", format!("{partition} out of range")))?;
        let plan = task.rewind(i, &emit, at, range)?;
        self.commit()?;
        Ok(plan)
    }

    /// Records produced to an output topic (logical name), in order.
    pub fn output(&self, topic: &str) -> &[OutRecord] {
        self.outputs.get(topic).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A reader of one partition of a table.
    pub fn table(&self, name: &str, partition: Partition) -> Result<PartitionReader<MemoryStore>> {
        let i = self
            .table_index(name)
            .ok_or_else(|| Error::Topology(format!("no table named {name:?}")))?;
        let task = self
            .tasks
            .get(partition.0 as usize)
            .ok_or_else(|| Error::config("partition", format!("{partition} out of range")))?;
        Ok(task.tables.tables[i].reader())
    }

    /// A reader of the partition of `table` that holds `key` (its encoded
    /// form must be what the topic's producer partitioned by), placed by
    /// the partitioner of the topic the table follows.
    pub fn table_for_key(
        &self,
        name: &str,
        partition_key: &[u8],
    ) -> Result<PartitionReader<MemoryStore>> {
        let topic = self
            .table_index(name)
            .map(|i| self.compiled.tables[i].topic.clone())
            .ok_or_else(|| Error::Topology(format!("no table named {name:?}")))?;
        let p = self.placed(&topic, partition_key)?;
        self.table(name, p)
    }

    /// The number of changelog records of a table partition.
    pub fn changelog_len(&self, name: &str, partition: Partition) -> usize {
        self.table_index(name)
            .map_or(0, |i| self.stores[i][partition.0 as usize].1.len())
    }

    fn table_index(&self, name: &str) -> Option<usize> {
        self.compiled.tables.iter().position(|t| t.name == name)
    }
}
