//! An in-memory [`KvStore`]: the reference implementation of the storage
//! contract, and a fast store for tests.
//!
//! Clones share the same data, which plays the role of the disk: dropping a
//! table partition without committing and opening a new one over a clone is
//! a faithful crash-and-reopen. A batch is applied under one lock, so it is
//! atomic. Cursors copy out the entry they point at; unlike RocksDB's they
//! do not pin a snapshot, which the table layer does not rely on for its
//! single writer.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Cf, KvBatch, KvCursor, KvStore, StoreError, StoreErrorKind, StoreResult};

type Maps = [BTreeMap<Vec<u8>, Vec<u8>>; 5];

/// An in-memory store. Cheap to clone; clones share data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    // A mutex rather than message passing: this type stands in for a disk
    // that several handles (a writer, readers, a reopened partition) share.
    maps: Arc<Mutex<Maps>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

fn idx(cf: Cf) -> usize {
    Cf::ALL.iter().position(|c| *c == cf).unwrap_or(0)
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, Maps>> {
        self.maps.lock().map_err(|_| StoreError {
            kind: StoreErrorKind::Other,
            message: "memory store poisoned by a panic in another thread".into(),
        })
    }

    /// Total number of entries in a column family (for tests and sizing).
    pub fn len(&self, cf: Cf) -> usize {
        self.lock().map(|m| m[idx(cf)].len()).unwrap_or(0)
    }

    /// Whether the column family is empty.
    pub fn is_empty(&self, cf: Cf) -> bool {
        self.len(cf) == 0
    }
}

/// A batch of writes for a [`MemoryStore`].
#[derive(Default)]
pub struct MemoryBatch {
    ops: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
}

impl KvBatch for MemoryBatch {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.ops.push((cf, key.to_vec(), Some(value.to_vec())));
    }
    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.ops.push((cf, key.to_vec(), None));
    }
    fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A cursor over a [`MemoryStore`] column family.
pub struct MemoryCursor<'a> {
    store: &'a MemoryStore,
    cf: usize,
    current: Option<(Vec<u8>, Vec<u8>)>,
    error: Option<StoreError>,
}

impl MemoryCursor<'_> {
    fn set(
        &mut self,
        pick: impl FnOnce(&BTreeMap<Vec<u8>, Vec<u8>>) -> Option<(Vec<u8>, Vec<u8>)>,
    ) {
        match self.store.lock() {
            Ok(maps) => self.current = pick(&maps[self.cf]),
            Err(e) => {
                self.current = None;
                self.error = Some(e);
            }
        }
    }
}

fn owned((k, v): (&Vec<u8>, &Vec<u8>)) -> (Vec<u8>, Vec<u8>) {
    (k.clone(), v.clone())
}

impl KvCursor for MemoryCursor<'_> {
    fn seek(&mut self, key: &[u8]) {
        self.set(|m| {
            m.range::<[u8], _>((Bound::Included(key), Bound::Unbounded))
                .next()
                .map(owned)
        });
    }
    fn seek_for_prev(&mut self, key: &[u8]) {
        self.set(|m| {
            m.range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
                .next_back()
                .map(owned)
        });
    }
    fn seek_to_first(&mut self) {
        self.set(|m| m.iter().next().map(owned));
    }
    fn seek_to_last(&mut self) {
        self.set(|m| m.iter().next_back().map(owned));
    }
    fn next(&mut self) {
        if let Some((k, _)) = self.current.take() {
            self.set(|m| {
                m.range::<[u8], _>((Bound::Excluded(&k[..]), Bound::Unbounded))
                    .next()
                    .map(owned)
            });
        }
    }
    fn prev(&mut self) {
        if let Some((k, _)) = self.current.take() {
            self.set(|m| {
                m.range::<[u8], _>((Bound::Unbounded, Bound::Excluded(&k[..])))
                    .next_back()
                    .map(owned)
            });
        }
    }
    fn valid(&self) -> bool {
        self.current.is_some()
    }
    fn key(&self) -> &[u8] {
        self.current.as_ref().map(|(k, _)| &k[..]).unwrap_or(&[])
    }
    fn value(&self) -> &[u8] {
        self.current.as_ref().map(|(_, v)| &v[..]).unwrap_or(&[])
    }
    fn status(&self) -> StoreResult<()> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl KvStore for MemoryStore {
    type Batch = MemoryBatch;
    type Cursor<'a> = MemoryCursor<'a>;

    fn get(&self, cf: Cf, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.lock()?[idx(cf)].get(key).cloned())
    }

    fn batch(&self) -> MemoryBatch {
        MemoryBatch::default()
    }

    fn write(&self, batch: MemoryBatch) -> StoreResult<()> {
        let mut maps = self.lock()?;
        for (cf, k, v) in batch.ops {
            match v {
                Some(v) => maps[idx(cf)].insert(k, v),
                None => maps[idx(cf)].remove(&k),
            };
        }
        Ok(())
    }

    fn cursor(&self, cf: Cf) -> StoreResult<MemoryCursor<'_>> {
        Ok(MemoryCursor {
            store: self,
            cf: idx(cf),
            current: None,
            error: None,
        })
    }

    fn flush(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::run_all(&mut || super::MemoryStore::new());
    }
}
