//! What an operator sees while it processes one record: the task's tables,
//! the task's pending outputs, and the record's provenance.
//!
//! Table writes are staged in the task's table partitions and become
//! versions at the next commit; outputs are buffered and produced at the
//! next commit, before input offsets are committed.

use std::sync::Arc;

use strata_state::{Lineage, Offset, Partition};

/// Header naming the operators a record went through, comma-separated.
pub const TRACE_HEADER: &str = "strata-trace";
/// Header naming the input record an output came from: `topic/partition@offset`.
pub const SOURCE_HEADER: &str = "strata-source";
/// Header present (value `1`) on records produced while replaying input
/// after a rewind.
pub const REPLAY_HEADER: &str = "strata-replay";
/// Header present (value `1`) on a table's change records made by a rewind.
pub const REWIND_HEADER: &str = "strata-rewind";

/// Where the record being processed came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// Input topic (physical name).
    pub topic: Arc<str>,
    /// Input partition.
    pub partition: Partition,
    /// Input offset.
    pub offset: Offset,
    /// The record's timestamp (ms since the epoch), if it has one.
    pub timestamp: Option<i64>,
    /// Whether the record is being replayed.
    pub replay: bool,
    /// Whether this is a table change made by a rewind.
    pub rewind: bool,
    /// Whether `topic`/`partition`/`offset` name a real input record (so
    /// table writes carry it as lineage); false for timers and rewinds.
    pub from_input: bool,
}

/// A record waiting to be produced at the next commit (the Kafka layer's
/// record to produce).
pub use strata_kafka::OutRecord;

/// A handle on a table within a task: its index in the topology.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableId(pub(crate) usize);

/// The task's tables, as operators use them.
pub trait TableAccess {
    /// The task's view of a key: staged if written since the last commit,
    /// else committed.
    fn get(&mut self, table: TableId, key: &[u8]) -> strata_state::Result<Option<Vec<u8>>>;
    /// A key's committed value as of a time.
    fn get_at(
        &mut self,
        table: TableId,
        key: &[u8],
        time: strata_state::Timestamp,
    ) -> strata_state::Result<Option<Vec<u8>>>;
    /// Stages a write (`None` deletes); the value is handed over.
    fn put(
        &mut self,
        table: TableId,
        key: &[u8],
        value: Option<Vec<u8>>,
        lineage: Option<Lineage>,
        replay: bool,
    );
}

/// The context of one record's processing.
pub struct Ctx<'a> {
    pub(crate) tables: &'a mut dyn TableAccess,
    pub(crate) outputs: &'a mut Vec<OutRecord>,
    pub(crate) meta: &'a RecordMeta,
    pub(crate) trace: &'a mut Vec<Arc<str>>,
}

impl<'a> Ctx<'a> {
    /// A context over a task's tables and output buffer.
    pub fn new(
        tables: &'a mut dyn TableAccess,
        outputs: &'a mut Vec<OutRecord>,
        meta: &'a RecordMeta,
        trace: &'a mut Vec<Arc<str>>,
    ) -> Ctx<'a> {
        Ctx {
            tables,
            outputs,
            meta,
            trace,
        }
    }

    /// The record being processed.
    pub fn record(&self) -> &RecordMeta {
        self.meta
    }

    /// Reads a key of a table (staged writes included).
    pub fn table_get(
        &mut self,
        table: TableId,
        key: &[u8],
    ) -> strata_state::Result<Option<Vec<u8>>> {
        self.tables.get(table, key)
    }

    /// Reads a key of a table as of a time (committed versions only).
    pub fn table_get_at(
        &mut self,
        table: TableId,
        key: &[u8],
        time: strata_state::Timestamp,
    ) -> strata_state::Result<Option<Vec<u8>>> {
        self.tables.get_at(table, key, time)
    }

    /// Stages a write to a table, with this record as its lineage (none
    /// for timers and rewinds).
    pub fn table_put(&mut self, table: TableId, key: &[u8], value: Option<&[u8]>) {
        self.table_put_owned(table, key, value.map(<[u8]>::to_vec));
    }

    /// [`Ctx::table_put`] handing the value over (no copy).
    pub fn table_put_owned(&mut self, table: TableId, key: &[u8], value: Option<Vec<u8>>) {
        let lineage = self.meta.from_input.then(|| Lineage {
            topic: self.meta.topic.to_string(),
            partition: self.meta.partition,
            offset: self.meta.offset,
        });
        self.tables
            .put(table, key, value, lineage, self.meta.replay);
    }

    /// Queues a record for `topic` (logical name), produced at the next
    /// commit, with trace and source headers.
    pub fn send(&mut self, topic: &Arc<str>, key: Option<Vec<u8>>, value: Option<Vec<u8>>) {
        let trace = self
            .trace
            .iter()
            .map(|s| &**s)
            .collect::<Vec<_>>()
            .join(",");
        let mut headers = vec![
            (TRACE_HEADER.to_string(), trace.into_bytes()),
            (
                SOURCE_HEADER.to_string(),
                format!(
                    "{}/{}@{}",
                    self.meta.topic, self.meta.partition.0, self.meta.offset.0
                )
                .into_bytes(),
            ),
        ];
        if self.meta.replay {
            headers.push((REPLAY_HEADER.to_string(), b"1".to_vec()));
        }
        if self.meta.rewind {
            headers.push((REWIND_HEADER.to_string(), b"1".to_vec()));
        }
        self.outputs.push(OutRecord {
            topic: topic.clone(),
            key,
            value,
            headers,
        });
    }

    /// Runs `f` with `name` on the trace.
    pub(crate) fn traced<T>(&mut self, name: &Arc<str>, f: impl FnOnce(&mut Ctx<'_>) -> T) -> T {
        self.trace.push(name.clone());
        let r = f(self);
        self.trace.pop();
        r
    }
}
