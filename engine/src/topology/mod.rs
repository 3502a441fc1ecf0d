//! Declaring what an app computes: typed streams from topics, operators,
//! tables, and outputs.
//!
//! A [`Topology`] is built once, before the app runs. Every operator is a
//! `Fn` shared by all tasks (state lives in tables, not in closures), and
//! records flow through them by direct calls: a source decodes the payload
//! and calls its downstream operators, which call theirs. Type erasure
//! happens only at the sources, so operators are monomorphic and allocate
//! nothing per record beyond what they produce.
//!
//! Invariant: every table is co-partitioned with the stream that feeds it:
//! a record's key decides its partition, and the aggregation key is the
//! record's key, so table partition `p` lives in task `p`.
//!
//! Files: the graph and its sources (`graph`), stream operators and table
//! handles (`stream`), table specs and codecs (`table`), timers
//! (`schedule`); here the [`Topology`] builder and its one compiled form
//! (`Compiled`), which the runtime and the test driver both run.

mod compiled;
mod graph;
mod schedule;
mod stream;
mod table;

use std::sync::{Arc, Mutex};

use crate::context::Ctx;
use crate::serde::Serde;
use crate::{Error, Result};

pub use crate::context::TableId;
pub(crate) use compiled::Compiled;
pub(crate) use graph::{Graph, RecordError, SourceFn, lock};
pub use graph::{OnError, REPARTITION_PREFIX};
pub use schedule::Schedule;
pub(crate) use schedule::TimerSpec;
pub(crate) use stream::add_source;
pub use stream::{Stream, Table};
pub(crate) use table::{ChangeFn, PartitionKeyFn, TableSpec};
pub use table::{JsonFn, TableCodecs, TableOptions};

/// The app's dataflow, declared before it runs.
#[derive(Clone, Default)]
pub struct Topology {
    // Shared with every stream handle so operators can be added from any
    // of them while building; built single-threaded, read-only once run.
    graph: Arc<Mutex<Graph>>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Topology {
        Topology::default()
    }

    /// A stream of the records of `topic` (a logical name, mapped to a
    /// physical one by the app's config), decoded with the given codecs.
    /// Records that fail to decode go to the dead-letter topic unless
    /// [`Stream::on_error`] says otherwise.
    pub fn stream<K, V>(
        &self,
        topic: &str,
        key: impl Serde<K>,
        value: impl Serde<V>,
    ) -> Stream<K, V>
    where
        K: Clone + Send + 'static,
        V: Clone + Send + 'static,
    {
        add_source(&self.graph, topic, key, value, false)
    }

    /// Runs `f` in every task on `schedule` (wall-clock time in the app,
    /// the driver's clock in the test driver), with access to the task's
    /// tables and outputs. An error is logged and counted; the timer keeps
    /// its schedule.
    pub fn timer<F>(&self, name: &str, schedule: Schedule, f: F)
    where
        F: Fn(&mut Ctx<'_>, strata_state::Timestamp) -> Result<(), String> + Send + Sync + 'static,
    {
        lock(&self.graph).timers.push(TimerSpec {
            name: Arc::from(name),
            schedule,
            run: Arc::new(f),
        });
    }

    /// Names of the topology's internal topics (logical).
    pub fn internal_topics(&self) -> Vec<String> {
        lock(&self.graph)
            .sources
            .iter()
            .filter(|s| s.internal)
            .map(|s| s.topic.clone())
            .collect()
    }
}

impl Topology {
    /// Checks the topology can run: at least one source, and distinct,
    /// valid table names. (Co-partitioning of the input topics is checked
    /// against the cluster when the app starts.)
    pub fn validate(&self) -> Result<()> {
        let g = lock(&self.graph);
        if g.sources.is_empty() {
            return Err(Error::Topology(
                "no input stream: declare one with Topology::stream".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &g.tables {
            strata_state::TableName::new(t.name.clone())?;
            if !names.insert(t.name.clone()) {
                return Err(Error::Topology(format!(
                    "table {:?} declared twice",
                    t.name
                )));
            }
        }
        Ok(())
    }

    /// Names of the tables, in declaration order.
    pub fn table_names(&self) -> Vec<String> {
        lock(&self.graph)
            .tables
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// Logical names of the input topics (repartition topics included).
    pub fn source_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = lock(&self.graph)
            .sources
            .iter()
            .map(|s| s.topic.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Logical names of the output topics (dead-letter topics named by
    /// [`OnError::DeadLetterTo`] included).
    pub fn output_topics(&self) -> Vec<String> {
        let g = lock(&self.graph);
        let mut out: Vec<String> = g.outputs.iter().cloned().collect();
        for s in &g.sources {
            if let OnError::DeadLetterTo(t) = &s.on_error {
                out.push(t.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use strata_state::codec::{Bincode as TableBincode, OrderedKey, ValueCodec};

    use super::*;
    use crate::serde::{Utf8, json};

    fn codecs(t: &Topology, table: &str) -> TableCodecs {
        lock(&t.graph)
            .tables
            .iter()
            .find(|s| s.name == table)
            .map(|s| s.codecs.clone())
            .unwrap()
    }

    #[test]
    fn table_codecs_speak_json_and_find_the_record_key() {
        let t = Topology::new();
        let s = t.stream("in", json::<String>(), json::<i64>());
        s.aggregate(
            "sums",
            TableOptions::default(),
            |_k, v: i64, old: Option<i64>| Some(old.unwrap_or(0) + v),
        );
        s.map(|k: String, v| (k.len() as u64, v)).aggregate(
            "by_len",
            TableOptions::default(),
            |_k, v: i64, _| Some(v),
        );
        t.stream("pairs", Utf8, Utf8).filter(|_, _| true).aggregate(
            "names",
            TableOptions::default(),
            |_k, v: String, _| Some(v),
        );

        let c = codecs(&t, "sums");
        let kb = (c.key_from_json)("\"ann\"").unwrap();
        assert_eq!(kb, "ann".to_string().to_key_bytes());
        assert_eq!((c.key_to_json)(&kb).unwrap(), "\"ann\"");
        assert!(
            (c.key_from_json)("5").is_err(),
            "a number is not a String key"
        );
        assert!((c.key_from_json)("{nope").is_err());
        let vb = ValueCodec::<i64>::encode(&TableBincode, &-42).unwrap();
        assert_eq!((c.value_to_json)(&vb).unwrap(), "-42");
        assert!((c.value_to_json)(&[0xff]).is_err());
        // The input's key codec is JSON: the record key is the JSON text.
        assert_eq!(
            (c.partition_key.as_ref().unwrap())(&kb).unwrap(),
            b"\"ann\"".to_vec()
        );

        // Re-keyed without a repartition: the record key is unknowable.
        let c = codecs(&t, "by_len");
        assert!(c.partition_key.is_none());
        assert_eq!((c.key_from_json)("3").unwrap(), 3u64.to_key_bytes());

        // A filter keeps keys, and UTF-8 keys are their own record keys.
        let c = codecs(&t, "names");
        let kb = (c.key_from_json)("\"bob\"").unwrap();
        assert_eq!(
            (c.partition_key.as_ref().unwrap())(&kb).unwrap(),
            b"bob".to_vec()
        );
    }
}
