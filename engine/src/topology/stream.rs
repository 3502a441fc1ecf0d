//! The typed handles users build with: [`Stream`] and its operators, and
//! the [`Table`]s aggregations produce.

use std::sync::{Arc, Mutex};

use strata_state::codec::{Bincode as TableBincode, OrderedKey, ValueCodec};

use super::graph::{Graph, RecordError, Sinks, SourceFn, SourceSpec, lock};
use super::{
    ChangeFn, OnError, PartitionKeyFn, REPARTITION_PREFIX, TableCodecs, TableId, TableOptions,
    TableSpec,
};
use crate::Result;
use crate::context::Ctx;
use crate::serde::Serde;

/// A typed stream of keyed records.
pub struct Stream<K, V> {
    pub(crate) graph: Arc<Mutex<Graph>>,
    pub(crate) sinks: Arc<Sinks<K, V>>,
    /// The source this stream reads, if it is one (for `on_error`).
    pub(crate) source: Option<usize>,
    /// The input topic whose partitioning the stream follows.
    pub(crate) topic: String,
    /// Encodes a key as the input topic's record key, while the stream's
    /// keys are still its source's (same type, same values).
    pub(crate) partition_key: Option<PartitionKeyFn<K>>,
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

pub(crate) fn add_source<K, V>(
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
