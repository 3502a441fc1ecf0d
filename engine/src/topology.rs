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

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

use strata_state::codec::{Bincode as TableBincode, OrderedKey, ValueCodec};
use strata_state::{Granularity, Retention};

use crate::context::Ctx;
use crate::serde::Serde;
use crate::{Error, Result};

/// What to do with a record that cannot be decoded or whose processing
/// fails.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Log it and go on.
    Skip,
    /// Send it, with the error in headers, to the app's dead-letter topic
    /// (`<application id>-dlq`) or the named one; then go on.
    #[default]
    DeadLetter,
    /// Send it to this dead-letter topic.
    DeadLetterTo(String),
    /// Stop the app with the error.
    Stop,
}

/// A downstream operator of a stream of `(K, V)`.
pub(crate) type Sink<K, V> = Arc<dyn Fn(&mut Ctx<'_>, K, V) -> Result<(), String> + Send + Sync>;

/// The downstream operators of one stream; frozen once the app runs.
pub(crate) struct Sinks<K, V> {
    list: RwLock<Vec<Sink<K, V>>>,
}

impl<K: Clone, V: Clone> Sinks<K, V> {
    fn new() -> Arc<Self> {
        Arc::new(Sinks {
            list: RwLock::new(Vec::new()),
        })
    }

    fn add(&self, s: Sink<K, V>) {
        if let Ok(mut l) = self.list.write() {
            l.push(s);
        }
    }

    /// Sends one record to every downstream operator.
    pub(crate) fn emit(&self, ctx: &mut Ctx<'_>, k: K, v: V) -> Result<(), String> {
        let list = self
            .list
            .read()
            .map_err(|_| "topology lock poisoned".to_string())?;
        match list.len() {
            0 => Ok(()),
            1 => list[0](ctx, k, v),
            n => {
                for s in &list[..n - 1] {
                    s(ctx, k.clone(), v.clone())?;
                }
                list[n - 1](ctx, k, v)
            }
        }
    }
}

/// A source: decodes a raw record and feeds its stream.
pub(crate) type SourceFn = Arc<
    dyn Fn(&mut Ctx<'_>, Option<&[u8]>, Option<&[u8]>) -> Result<(), RecordError> + Send + Sync,
>;

/// Why a record failed.
#[derive(Debug, Clone)]
pub(crate) enum RecordError {
    /// Its key or value could not be decoded.
    Decode(String),
    /// An operator failed.
    Operator(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Decode(e) => write!(f, "undecodable: {e}"),
            RecordError::Operator(e) => write!(f, "operator failed: {e}"),
        }
    }
}

pub(crate) struct SourceSpec {
    pub topic: String,
    pub on_error: OnError,
    pub run: SourceFn,
    /// An internal (repartition) topic the app creates itself.
    pub internal: bool,
}

/// Prefix of the logical names of repartition topics; the physical name
/// is `<application id>-<name>-repartition`.
pub const REPARTITION_PREFIX: &str = "__repartition-";

/// When a timer fires.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// Every interval (after the task starts, then after each firing).
    Every(std::time::Duration),
    /// On a cron schedule (seconds minutes hours day-of-month month
    /// day-of-week, UTC), e.g. `0 */5 * * * *`.
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// Parses a cron expression.
    pub fn cron(expr: &str) -> Result<Schedule> {
        use std::str::FromStr;
        cron::Schedule::from_str(expr)
            .map(|s| Schedule::Cron(Box::new(s)))
            .map_err(|e| {
                Error::config(
                    "timer.schedule",
                    format!("{expr:?} is not a cron expression: {e}"),
                )
            })
    }

    /// The first firing strictly after `now`.
    pub fn next_after(&self, now: strata_state::Timestamp) -> Option<strata_state::Timestamp> {
        match self {
            Schedule::Every(d) => Some(strata_state::Timestamp(
                now.0 + (d.as_millis() as u64).max(1),
            )),
            Schedule::Cron(s) => {
                let at = chrono::DateTime::from_timestamp_millis(now.0 as i64)?;
                s.after(&at)
                    .next()
                    .map(|t| strata_state::Timestamp(t.timestamp_millis().max(0) as u64))
            }
        }
    }
}

/// A timer's body: runs on the task's thread with access to its tables.
pub(crate) type TimerFn =
    Arc<dyn Fn(&mut Ctx<'_>, strata_state::Timestamp) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct TimerSpec {
    pub name: Arc<str>,
    pub schedule: Schedule,
    pub run: TimerFn,
}

/// How a table is stored. Build it with `..Default::default()` so that new
/// settings keep their defaults.
#[derive(Clone, Debug)]
pub struct TableOptions {
    /// How much history to keep.
    pub retention: Retention,
    /// What makes a version.
    pub granularity: Granularity,
    /// Latest values each table partition keeps in memory, in front of
    /// RocksDB (0 disables the cache). A read-modify-write of a key that
    /// misses it costs a RocksDB read, so size it for a partition's hot
    /// keys: about 100 bytes plus the key and value per entry.
    pub cache_entries: usize,
    /// Staged mutations after which a task commits without waiting for
    /// the commit interval (at least 1). Under [`Granularity::PerCommit`]
    /// these are distinct keys, so a larger bound folds more updates of a
    /// key into one version, at the cost of memory and commit latency.
    pub max_staged: usize,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            retention: Retention::Unlimited,
            granularity: Granularity::PerMutation,
            cache_entries: strata_state::TableConfig::DEFAULT_CACHE_ENTRIES,
            max_staged: strata_state::TableConfig::DEFAULT_MAX_STAGED,
        }
    }
}

impl TableOptions {
    /// The settings of partition `partition` of table `name`.
    pub(crate) fn table_config(
        &self,
        name: strata_state::TableName,
        partition: strata_state::Partition,
    ) -> strata_state::TableConfig {
        let mut c = strata_state::TableConfig::new(name, partition)
            .retention(self.retention)
            .granularity(self.granularity);
        c.cache_entries = self.cache_entries;
        c.max_staged = self.max_staged;
        c
    }
}

/// Feeds a table's downstream (its `changes()` stream) with a change made
/// outside its operator, such as a rewind: key and value as stored.
pub(crate) type ChangeFn =
    Arc<dyn Fn(&mut Ctx<'_>, &[u8], Option<&[u8]>) -> Result<(), String> + Send + Sync>;

pub(crate) struct TableSpec {
    pub name: String,
    pub options: TableOptions,
    pub emit_change: ChangeFn,
    /// How clients that do not know the Rust types read and address it.
    pub codecs: TableCodecs,
    /// The logical input topic whose partitioning the table follows.
    pub topic: String,
}

/// Converts between JSON text and a table's key or value bytes.
/// A type-erased conversion (JSON in or out).
pub type JsonFn<I, O> = Arc<dyn Fn(&I) -> Result<O, String> + Send + Sync>;

/// Encodes a stream key as its input topic's record key.
pub(crate) type PartitionKeyFn<K> = Arc<dyn Fn(&K) -> Result<Vec<u8>, String> + Send + Sync>;

/// A table's codecs with its Rust types erased: what the query service
/// needs to take JSON keys and render JSON keys and values.
#[derive(Clone)]
pub struct TableCodecs {
    /// JSON text of a key -> the key's table bytes (its `OrderedKey`
    /// encoding).
    pub key_from_json: JsonFn<str, Vec<u8>>,
    /// A key's table bytes -> JSON text.
    pub key_to_json: JsonFn<[u8], String>,
    /// A stored value (bincode, with its format byte) -> JSON text.
    pub value_to_json: JsonFn<[u8], String>,
    /// A key's table bytes -> the record key its input topic carries, which
    /// decides its partition. `None` when the stream feeding the table
    /// changed its key type after the source (a `map` without
    /// `repartition`): the partition then cannot be computed from the key.
    pub partition_key: Option<JsonFn<[u8], Vec<u8>>>,
}

impl TableCodecs {
    fn new<K, A>(partition_key: Option<PartitionKeyFn<K>>) -> TableCodecs
    where
        K: OrderedKey + ::serde::Serialize + ::serde::de::DeserializeOwned + 'static,
        A: ::serde::Serialize + ::serde::de::DeserializeOwned + 'static,
    {
        TableCodecs {
            key_from_json: Arc::new(|text: &str| {
                let k: K = serde_json::from_str(text)
                    .map_err(|e| format!("not a JSON key of this table: {e}"))?;
                Ok(k.to_key_bytes())
            }),
            key_to_json: Arc::new(|bytes: &[u8]| {
                let k =
                    K::decode_key(bytes).map_err(|e| format!("not a key of this table: {e}"))?;
                serde_json::to_string(&k).map_err(|e| format!("rendering the key as JSON: {e}"))
            }),
            value_to_json: Arc::new(|bytes: &[u8]| {
                let a: A = ValueCodec::<A>::decode(&TableBincode, bytes)
                    .map_err(|e| format!("decoding the stored value: {e}"))?;
                serde_json::to_string(&a).map_err(|e| format!("rendering the value as JSON: {e}"))
            }),
            partition_key: partition_key.map(|f| -> JsonFn<[u8], Vec<u8>> {
                Arc::new(move |bytes: &[u8]| {
                    let k = K::decode_key(bytes)
                        .map_err(|e| format!("not a key of this table: {e}"))?;
                    f(&k)
                })
            }),
        }
    }
}

/// A handle on a table within a task: its index in the topology.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableId(pub(crate) usize);

#[derive(Default)]
pub(crate) struct Graph {
    pub sources: Vec<SourceSpec>,
    pub timers: Vec<TimerSpec>,
    pub tables: Vec<TableSpec>,
    pub outputs: BTreeSet<String>,
    pub next_op: usize,
}

/// The app's dataflow, declared before it runs.
#[derive(Clone, Default)]
pub struct Topology {
    // Shared with every stream handle so operators can be added from any
    // of them while building; built single-threaded, read-only once run.
    graph: Arc<Mutex<Graph>>,
}

fn lock(g: &Mutex<Graph>) -> std::sync::MutexGuard<'_, Graph> {
    g.lock().unwrap_or_else(|p| p.into_inner())
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

    pub(crate) fn take_graph(&self) -> Arc<Mutex<Graph>> {
        self.graph.clone()
    }
}

fn add_source<K, V>(
    graph: &Arc<Mutex<Graph>>,
    topic: &str,
    key: impl Serde<K>,
    value: impl Serde<V>,
    internal: bool,
) -> Stream<K, V>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let sinks = Sinks::new();
    let downstream = sinks.clone();
    let key = Arc::new(key);
    let pkey: PartitionKeyFn<K> = {
        let key = key.clone();
        Arc::new(move |k: &K| key.encode(k))
    };
    let run: SourceFn = Arc::new(move |ctx, k, v| {
        let k = key
            .decode(k.unwrap_or(&[]))
            .map_err(|e| RecordError::Decode(format!("key: {e}")))?;
        let v = match v {
            Some(v) => value
                .decode(v)
                .map_err(|e| RecordError::Decode(format!("value: {e}")))?,
            None => return Err(RecordError::Decode("value: null payload".into())),
        };
        downstream.emit(ctx, k, v).map_err(RecordError::Operator)
    });
    let mut g = lock(graph);
    g.sources.push(SourceSpec {
        topic: topic.to_string(),
        on_error: OnError::default(),
        run,
        internal,
    });
    let source = g.sources.len() - 1;
    Stream {
        graph: graph.clone(),
        sinks,
        source: Some(source),
        topic: topic.to_string(),
        partition_key: Some(pkey),
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

    /// The logical input topic whose partitioning table `name` follows.
    pub(crate) fn table_topic(&self, name: &str) -> Option<String> {
        lock(&self.graph)
            .tables
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.topic.clone())
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

/// A typed stream of keyed records.
pub struct Stream<K, V> {
    graph: Arc<Mutex<Graph>>,
    sinks: Arc<Sinks<K, V>>,
    /// The source this stream reads, if it is one (for `on_error`).
    source: Option<usize>,
    /// The input topic whose partitioning the stream follows.
    topic: String,
    /// Encodes a key as the input topic's record key, while the stream's
    /// keys are still its source's (same type, same values).
    partition_key: Option<PartitionKeyFn<K>>,
}

impl<K, V> Stream<K, V>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn derived<K2: Clone, V2: Clone>(&self) -> (Stream<K2, V2>, Arc<Sinks<K2, V2>>) {
        let sinks = Sinks::new();
        (
            Stream {
                graph: self.graph.clone(),
                sinks: sinks.clone(),
                source: None,
                topic: self.topic.clone(),
                partition_key: None,
            },
            sinks,
        )
    }

    fn op_name(&self, kind: &str) -> Arc<str> {
        let mut g = lock(&self.graph);
        g.next_op += 1;
        Arc::from(format!("{kind}-{}", g.next_op))
    }

    /// Sets what happens to records of this source that fail to decode or
    /// whose processing fails. Only a stream returned by
    /// [`Topology::stream`] (or [`Stream::repartition`]) has a policy; on a
    /// derived stream this does nothing, as the source's policy applies.
    pub fn on_error(self, policy: OnError) -> Self {
        if let Some(i) = self.source {
            lock(&self.graph).sources[i].on_error = policy;
        }
        self
    }

    /// Transforms each record; the key must keep the record in its
    /// partition (use the same key, or a key that hashes alike) if a table
    /// is fed downstream.
    pub fn map<K2, V2, F>(&self, f: F) -> Stream<K2, V2>
    where
        K2: Clone + Send + 'static,
        V2: Clone + Send + 'static,
        F: Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
    {
        let (out, sinks) = self.derived();
        let name = self.op_name("map");
        self.sinks.add(Arc::new(move |ctx, k, v| {
            let (k2, v2) = f(k, v);
            ctx.traced(&name, |ctx| sinks.emit(ctx, k2, v2))
        }));
        out
    }

    /// Transforms each value, keeping the key.
    pub fn map_values<V2, F>(&self, f: F) -> Stream<K, V2>
    where
        V2: Clone + Send + 'static,
        F: Fn(&K, V) -> V2 + Send + Sync + 'static,
    {
        let mut out = self.map(move |k, v| {
            let v2 = f(&k, v);
            (k, v2)
        });
        out.partition_key = self.partition_key.clone();
        out
    }

    /// Keeps the records for which `f` is true.
    pub fn filter<F>(&self, f: F) -> Stream<K, V>
    where
        F: Fn(&K, &V) -> bool + Send + Sync + 'static,
    {
        let (mut out, sinks) = self.derived();
        out.partition_key = self.partition_key.clone();
        let name = self.op_name("filter");
        self.sinks.add(Arc::new(move |ctx, k, v| {
            if f(&k, &v) {
                ctx.traced(&name, |ctx| sinks.emit(ctx, k, v))
            } else {
                Ok(())
            }
        }));
        out
    }

    /// Turns each record into zero or more records.
    pub fn flat_map<K2, V2, I, F>(&self, f: F) -> Stream<K2, V2>
    where
        K2: Clone + Send + 'static,
        V2: Clone + Send + 'static,
        I: IntoIterator<Item = (K2, V2)>,
        F: Fn(K, V) -> I + Send + Sync + 'static,
    {
        let (out, sinks) = self.derived();
        let name = self.op_name("flat_map");
        self.sinks.add(Arc::new(move |ctx, k, v| {
            for (k2, v2) in f(k, v) {
                ctx.traced(&name, |ctx| sinks.emit(ctx, k2, v2))?;
            }
            Ok(())
        }));
        out
    }

    /// A low-level processor with access to the task's tables and outputs;
    /// an `Err` is handled by the source's [`OnError`] policy.
    pub fn process<F>(&self, f: F)
    where
        F: Fn(&mut Ctx<'_>, K, V) -> Result<(), String> + Send + Sync + 'static,
    {
        let name = self.op_name("process");
        self.sinks.add(Arc::new(move |ctx, k, v| {
            ctx.traced(&name, |ctx| f(ctx, k, v))
        }));
    }

    /// Writes each record to `topic` (a logical name), encoded with the
    /// given codecs, with headers naming the operators it went through.
    pub fn to(&self, topic: &str, key: impl Serde<K>, value: impl Serde<V>) {
        let t: Arc<str> = Arc::from(topic);
        lock(&self.graph).outputs.insert(topic.to_string());
        let name = self.op_name("to");
        self.sinks.add(Arc::new(move |ctx, k, v| {
            let kb = key.encode(&k)?;
            let vb = value.encode(&v)?;
            ctx.traced(&name, |ctx| {
                ctx.send(&t, Some(kb), Some(vb));
                Ok(())
            })
        }));
    }

    /// Folds the records of each key into a table named `name`: `f` gets
    /// the key, the record and the key's current value (`None` if absent)
    /// and returns the new value (`None` deletes the key). Every change is
    /// a version of the table.
    ///
    /// The key type must also be serde-serializable: clients of the query
    /// service address keys and read values as JSON.
    pub fn aggregate<A, F>(&self, name: &str, options: TableOptions, f: F) -> Table<K, A>
    where
        K: OrderedKey + ::serde::Serialize + ::serde::de::DeserializeOwned,
        A: ::serde::Serialize + ::serde::de::DeserializeOwned + Clone + Send + 'static,
        F: Fn(&K, V, Option<A>) -> Option<A> + Send + Sync + 'static,
    {
        let changes: Arc<Sinks<K, Option<A>>> = Sinks::new();
        let rewinds = changes.clone();
        let emit_change: ChangeFn = Arc::new(move |ctx, kb, vb| {
            let k = K::decode_key(kb).map_err(|e| e.to_string())?;
            let a = match vb {
                Some(b) => {
                    Some(ValueCodec::<A>::decode(&TableBincode, b).map_err(|e| e.to_string())?)
                }
                None => None,
            };
            rewinds.emit(ctx, k, a)
        });
        let id = {
            let mut g = lock(&self.graph);
            let codecs = TableCodecs::new::<K, A>(self.partition_key.clone());
            g.tables.push(TableSpec {
                name: name.to_string(),
                options,
                emit_change,
                codecs,
                topic: self.topic.clone(),
            });
            TableId(g.tables.len() - 1)
        };
        let downstream = changes.clone();
        let op = self.op_name("aggregate");
        self.sinks.add(Arc::new(move |ctx, k, v| {
            let kb = k.to_key_bytes();
            let old: Option<A> = match ctx.table_get(id, &kb).map_err(|e| e.to_string())? {
                Some(bytes) => Some(
                    ValueCodec::<A>::decode(&TableBincode, &bytes).map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let new = f(&k, v, old);
            match &new {
                Some(a) => {
                    let bytes =
                        ValueCodec::<A>::encode(&TableBincode, a).map_err(|e| e.to_string())?;
                    ctx.table_put_owned(id, &kb, Some(bytes));
                }
                None => ctx.table_put_owned(id, &kb, None),
            }
            ctx.traced(&op, |ctx| downstream.emit(ctx, k, new))
        }));
        Table {
            graph: self.graph.clone(),
            id,
            changes,
            topic: self.topic.clone(),
            partition_key: self.partition_key.clone(),
            _k: std::marker::PhantomData,
        }
    }

    /// Re-keys safely: sends the stream through an internal topic
    /// (`<application id>-<name>-repartition`, partitioned by the new key),
    /// so a table fed downstream is co-partitioned with its keys. Use after
    /// a `map` that changes keys and before an `aggregate`.
    pub fn repartition<KS, VS>(&self, name: &str, key: KS, value: VS) -> Stream<K, V>
    where
        KS: Serde<K> + Clone,
        VS: Serde<V> + Clone,
    {
        let topic = format!("{REPARTITION_PREFIX}{name}");
        self.to(&topic, key.clone(), value.clone());
        add_source(&self.graph, &topic, key, value, true)
    }

    /// Joins each record with the value its key had in `table` at the
    /// record's timestamp (committed versions; the latest if the record
    /// has no timestamp). Reads older than the table's retention fail the
    /// record (see [`OnError`]).
    pub fn join_table_as_of<A, R, F>(&self, table: &Table<K, A>, f: F) -> Stream<K, R>
    where
        K: OrderedKey,
        A: ::serde::Serialize + ::serde::de::DeserializeOwned + Clone + Send + 'static,
        R: Clone + Send + 'static,
        F: Fn(&K, V, Option<A>) -> Option<R> + Send + Sync + 'static,
    {
        self.join(table, "join_as_of", true, f)
    }

    /// Joins each record with the current value of its key in `table`. The
    /// table must be co-partitioned with this stream (fed from this topic or
    /// another with the same partition count and keys partitioned alike), so
    /// the key's table partition is in this task.
    pub fn join_table<A, R, F>(&self, table: &Table<K, A>, f: F) -> Stream<K, R>
    where
        K: OrderedKey,
        A: ::serde::Serialize + ::serde::de::DeserializeOwned + Clone + Send + 'static,
        R: Clone + Send + 'static,
        F: Fn(&K, V, Option<A>) -> Option<R> + Send + Sync + 'static,
    {
        self.join(table, "join", false, f)
    }

    fn join<A, R, F>(&self, table: &Table<K, A>, kind: &str, as_of: bool, f: F) -> Stream<K, R>
    where
        K: OrderedKey,
        A: ::serde::Serialize + ::serde::de::DeserializeOwned + Clone + Send + 'static,
        R: Clone + Send + 'static,
        F: Fn(&K, V, Option<A>) -> Option<R> + Send + Sync + 'static,
    {
        let (mut out, sinks) = self.derived();
        out.partition_key = self.partition_key.clone();
        let id = table.id;
        let name = self.op_name(kind);
        self.sinks.add(Arc::new(move |ctx, k, v| {
            let kb = k.to_key_bytes();
            let bytes = match ctx.record().timestamp {
                Some(ts) if as_of && ts >= 0 => {
                    ctx.table_get_at(id, &kb, strata_state::Timestamp(ts as u64))
                }
                _ => ctx.table_get(id, &kb),
            }
            .map_err(|e| e.to_string())?;
            let current: Option<A> = match bytes {
                Some(b) => {
                    Some(ValueCodec::<A>::decode(&TableBincode, &b).map_err(|e| e.to_string())?)
                }
                None => None,
            };
            match f(&k, v, current) {
                Some(r) => ctx.traced(&name, |ctx| sinks.emit(ctx, k, r)),
                None => Ok(()),
            }
        }));
        out
    }
}

/// A table computed by the app: one versioned table partition per input
/// partition.
pub struct Table<K, A> {
    graph: Arc<Mutex<Graph>>,
    id: TableId,
    changes: Arc<Sinks<K, Option<A>>>,
    topic: String,
    partition_key: Option<PartitionKeyFn<K>>,
    _k: std::marker::PhantomData<fn() -> K>,
}

impl<K, A> Table<K, A>
where
    K: Clone + Send + 'static,
    A: Clone + Send + 'static,
{
    /// The table's changes as a stream: each new value (`None` for a
    /// deletion), in version order per partition.
    pub fn changes(&self) -> Stream<K, Option<A>> {
        Stream {
            graph: self.graph.clone(),
            sinks: self.changes.clone(),
            source: None,
            topic: self.topic.clone(),
            partition_key: self.partition_key.clone(),
        }
    }

    /// The table's id within its task.
    pub fn id(&self) -> TableId {
        self.id
    }
}

#[cfg(test)]
mod tests {
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
