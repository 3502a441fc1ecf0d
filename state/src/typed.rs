//! Typed access to a table partition: keys through [`OrderedKey`], values
//! through a [`ValueCodec`] (bincode by default).

use std::marker::PhantomData;

use crate::Result;
use crate::codec::{Bincode, OrderedKey, ValueCodec};
use crate::store::KvStore;
use crate::table::{At, PartitionReader, TablePartition, Versioned};
use crate::types::{Lineage, Timestamp, Version, VersionFlags};

/// A decoded value with its version metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TypedVersioned<V> {
    /// The version that wrote the value.
    pub version: Version,
    /// Its commit time.
    pub time: Timestamp,
    /// Its flags.
    pub flags: VersionFlags,
    /// The input record that caused it.
    pub lineage: Option<Lineage>,
    /// The value.
    pub value: V,
}

/// A table partition with typed keys and values.
pub struct Table<K, V, S: KvStore, C = Bincode> {
    inner: TablePartition<S>,
    codec: C,
    _types: PhantomData<fn(K, V)>,
}

/// A typed reader of committed versions.
pub struct TableReader<K, V, S, C = Bincode> {
    inner: PartitionReader<S>,
    codec: C,
    _types: PhantomData<fn(K, V)>,
}

fn decode<V, C: ValueCodec<V>>(codec: &C, v: Versioned) -> Result<TypedVersioned<V>> {
    Ok(TypedVersioned {
        version: v.version,
        time: v.time,
        flags: v.flags,
        lineage: v.lineage,
        value: codec.decode(&v.value)?,
    })
}

impl<K: OrderedKey, V, S: KvStore> Table<K, V, S, Bincode>
where
    Bincode: ValueCodec<V>,
{
    /// Wraps a partition, with bincode values.
    pub fn new(inner: TablePartition<S>) -> Self {
        Table::with_codec(inner, Bincode)
    }
}

impl<K: OrderedKey, V, S: KvStore, C: ValueCodec<V> + Clone> Table<K, V, S, C> {
    /// Wraps a partition with a value codec.
    pub fn with_codec(inner: TablePartition<S>, codec: C) -> Self {
        Table {
            inner,
            codec,
            _types: PhantomData,
        }
    }

    /// The untyped partition.
    pub fn partition(&mut self) -> &mut TablePartition<S> {
        &mut self.inner
    }

    /// Stages `key = value`.
    pub fn put(&mut self, key: &K, value: &V, lineage: Option<Lineage>) -> Result<()> {
        let v = self.codec.encode(value)?;
        self.inner.put(&key.to_key_bytes(), &v, lineage);
        Ok(())
    }

    /// Stages the deletion of `key`.
    pub fn delete(&mut self, key: &K, lineage: Option<Lineage>) {
        self.inner.delete(&key.to_key_bytes(), lineage);
    }

    /// The owner's view of `key` (staged, else committed).
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.inner.get(&key.to_key_bytes())? {
            Some(b) => Ok(Some(
                self.codec
                    .decode(&b)
                    .map_err(|e| self.value_error(key, e))?,
            )),
            None => Ok(None),
        }
    }

    fn value_error(&self, key: &K, e: crate::Error) -> crate::Error {
        let loc = self.inner.reader().location().clone();
        crate::Error::Corrupt {
            location: Box::new(loc),
            key: Some(key.to_key_bytes()),
            detail: e.to_string(),
        }
    }

    /// Commits everything staged (no changelog).
    pub fn commit(&mut self, now: Timestamp) -> Result<crate::table::CommitSummary> {
        self.inner.commit(now, &[])
    }

    /// A typed reader.
    pub fn reader(&self) -> TableReader<K, V, S, C> {
        TableReader {
            inner: self.inner.reader(),
            codec: self.codec.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: OrderedKey, V, S: KvStore, C: ValueCodec<V>> TableReader<K, V, S, C> {
    /// The latest committed value of `key`.
    pub fn get(&self, key: &K) -> Result<Option<TypedVersioned<V>>> {
        self.get_at(key, At::Latest)
    }

    /// The value of `key` at `at`.
    pub fn get_at(&self, key: &K, at: At) -> Result<Option<TypedVersioned<V>>> {
        let k = key.to_key_bytes();
        match self.inner.get_at(&k, at)? {
            Some(v) => decode(&self.codec, v)
                .map(Some)
                .map_err(|e| crate::Error::Corrupt {
                    location: Box::new(self.inner.location().clone()),
                    key: Some(k),
                    detail: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// The untyped reader.
    pub fn untyped(&self) -> &PartitionReader<S> {
        &self.inner
    }
}
