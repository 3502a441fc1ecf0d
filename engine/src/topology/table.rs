//! Tables as the topology declares them: storage options, the spec the
//! runtime opens, and the type-erased codecs clients read them with.

use std::sync::Arc;

use strata_state::codec::{Bincode as TableBincode, OrderedKey, ValueCodec};
use strata_state::{Granularity, Retention};

use crate::Result;
use crate::context::Ctx;

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

/// Converts between JSON text and a table's key or value bytes (type-erased).
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
    pub(crate) fn new<K, A>(partition_key: Option<PartitionKeyFn<K>>) -> TableCodecs
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
