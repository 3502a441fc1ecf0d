//! The RocksDB implementation of the storage seam: one RocksDB instance per
//! table partition, all sharing one block cache and one write-buffer budget
//! ([`RocksEnv`]), so memory stays bounded however many partitions a
//! process holds.
//!
//! This is the only module that names `rocksdb`. Every column family of a
//! partition is flushed atomically (`atomic_flush`), so even with the WAL
//! disabled the files on disk always hold the effects of whole batches.
//!
//! Unlogged writes ([`KvStore::write_unlogged`], used by restores) skip the
//! WAL even when it is on. The store remembers that memtables hold such
//! writes and flushes them before the next logged write, so a WAL record
//! never outlives, after a crash, an earlier write it depends on.

// The storage seam: the one module that may name RocksDB (clippy.toml).
#![allow(clippy::disallowed_types)]

mod env;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBRawIteratorWithThreadMode, ErrorKind, WriteBatch, WriteOptions,
};

pub use env::{RocksConfig, RocksEnv};

use super::{Cf, KvBatch, KvCursor, KvStore, StoreError, StoreErrorKind, StoreResult};

fn err(e: rocksdb::Error) -> StoreError {
    let kind = match e.kind() {
        ErrorKind::Corruption => StoreErrorKind::Corruption,
        ErrorKind::IOError => StoreErrorKind::Io,
        _ => StoreErrorKind::Other,
    };
    StoreError {
        kind,
        message: e.into_string(),
    }
}

/// One table partition's RocksDB instance.
pub struct RocksStore {
    db: Arc<DB>,
    path: PathBuf,
    write_opts: WriteOptionsSend,
    /// Options of an unlogged write (WAL off).
    unlogged_opts: WriteOptionsSend,
    /// Whether the WAL is on for ordinary writes.
    wal: bool,
    /// Set while memtables may hold unlogged writes not yet flushed.
    unflushed: AtomicBool,
}

/// `WriteOptions` is a plain options struct that RocksDB only reads; the
/// wrapper states that it may be shared between threads.
struct WriteOptionsSend(WriteOptions);
// SAFETY: rocksdb::WriteOptions is an owned pointer to a C struct of plain
// flags that RocksDB never mutates after construction.
#[allow(unsafe_code)]
unsafe impl Send for WriteOptionsSend {}
// SAFETY: see above; only shared references are handed to `DB::write_opt`.
#[allow(unsafe_code)]
unsafe impl Sync for WriteOptionsSend {}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksStore {
    /// Opens (creating if missing) the partition store at `path`.
    pub fn open(path: impl AsRef<Path>, env: &RocksEnv) -> StoreResult<RocksStore> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|e| StoreError {
            kind: StoreErrorKind::Io,
            message: format!("cannot create {}: {e}", path.display()),
        })?;
        let db_opts = env.db_options();
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), env.cf_options(*cf)));
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs).map_err(err)?;
        let wal = env.config().wal;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(!wal);
        let mut unlogged_opts = WriteOptions::default();
        unlogged_opts.disable_wal(true);
        Ok(RocksStore {
            db: Arc::new(db),
            path,
            write_opts: WriteOptionsSend(write_opts),
            unlogged_opts: WriteOptionsSend(unlogged_opts),
            wal,
            unflushed: AtomicBool::new(false),
        })
    }

    /// The directory holding this store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, cf: Cf) -> StoreResult<&rocksdb::ColumnFamily> {
        self.db.cf_handle(cf.name()).ok_or_else(|| StoreError {
            kind: StoreErrorKind::Other,
            message: format!("column family {} missing", cf.name()),
        })
    }

    /// Flushes every column family's memtables together; with `wait`,
    /// returns once they are on disk (and so is every flush started
    /// before, since flushes complete in order).
    fn flush_all(&self, wait: bool) -> StoreResult<()> {
        let handles: Vec<&rocksdb::ColumnFamily> = Cf::ALL
            .iter()
            .map(|cf| self.cf(*cf))
            .collect::<StoreResult<_>>()?;
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(wait);
        self.db.flush_cfs_opt(&handles, &opts).map_err(err)
    }

    /// Flushes if unlogged writes may be in the memtables; on failure they
    /// still are.
    fn settle_unlogged(&self) -> StoreResult<()> {
        if self.unflushed.swap(false, Ordering::AcqRel)
            && let Err(e) = self.flush_all(true)
        {
            self.unflushed.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// Deletes a partition store's files. The store must not be open.
    pub fn destroy(path: impl AsRef<Path>) -> StoreResult<()> {
        match std::fs::remove_dir_all(path.as_ref()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError {
                kind: StoreErrorKind::Io,
                message: format!("cannot delete {}: {e}", path.as_ref().display()),
            }),
        }
    }
}

/// A batch of writes for a [`RocksStore`].
pub struct RocksBatch {
    db: Arc<DB>,
    batch: WriteBatch,
}

impl KvBatch for RocksBatch {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        // The column families are created at open and never dropped.
        if let Some(h) = self.db.cf_handle(cf.name()) {
            self.batch.put_cf(h, key, value);
        }
    }
    fn delete(&mut self, cf: Cf, key: &[u8]) {
        if let Some(h) = self.db.cf_handle(cf.name()) {
            self.batch.delete_cf(h, key);
        }
    }
    fn len(&self) -> usize {
        self.batch.len()
    }
}

/// A cursor over one column family of a [`RocksStore`].
pub struct RocksCursor<'a> {
    it: DBRawIteratorWithThreadMode<'a, DB>,
}

impl KvCursor for RocksCursor<'_> {
    fn seek(&mut self, key: &[u8]) {
        self.it.seek(key)
    }
    fn seek_for_prev(&mut self, key: &[u8]) {
        self.it.seek_for_prev(key)
    }
    fn seek_to_first(&mut self) {
        self.it.seek_to_first()
    }
    fn seek_to_last(&mut self) {
        self.it.seek_to_last()
    }
    fn next(&mut self) {
        if self.it.valid() {
            self.it.next()
        }
    }
    fn prev(&mut self) {
        if self.it.valid() {
            self.it.prev()
        }
    }
    fn valid(&self) -> bool {
        self.it.valid()
    }
    fn key(&self) -> &[u8] {
        self.it.key().unwrap_or(&[])
    }
    fn value(&self) -> &[u8] {
        self.it.value().unwrap_or(&[])
    }
    fn status(&self) -> StoreResult<()> {
        self.it.status().map_err(err)
    }
}

impl KvStore for RocksStore {
    type Batch = RocksBatch;
    type Cursor<'a> = RocksCursor<'a>;

    fn get(&self, cf: Cf, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let h = self.cf(cf)?;
        Ok(self
            .db
            .get_pinned_cf(h, key)
            .map_err(err)?
            .map(|p| p.to_vec()))
    }

    fn batch(&self) -> RocksBatch {
        RocksBatch {
            db: self.db.clone(),
            batch: WriteBatch::default(),
        }
    }

    fn batch_with_capacity(&self, bytes: usize) -> RocksBatch {
        RocksBatch {
            db: self.db.clone(),
            batch: WriteBatch::with_capacity_bytes(bytes),
        }
    }

    fn write(&self, batch: RocksBatch) -> StoreResult<()> {
        if self.wal {
            // A logged write must not be recovered from the WAL on top of
            // unlogged writes that a crash would lose.
            self.settle_unlogged()?;
        }
        self.db
            .write_opt(batch.batch, &self.write_opts.0)
            .map_err(err)
    }

    fn write_unlogged(&self, batch: RocksBatch) -> StoreResult<()> {
        if self.wal {
            self.unflushed.store(true, Ordering::Release);
        }
        self.db
            .write_opt(batch.batch, &self.unlogged_opts.0)
            .map_err(err)
    }

    fn cursor(&self, cf: Cf) -> StoreResult<RocksCursor<'_>> {
        let h = self.cf(cf)?;
        Ok(RocksCursor {
            it: self.db.raw_iterator_cf(h),
        })
    }

    fn flush(&self) -> StoreResult<()> {
        let had = self.unflushed.swap(false, Ordering::AcqRel);
        self.flush_all(true).inspect_err(|_| {
            if had {
                self.unflushed.store(true, Ordering::Release);
            }
        })
    }

    fn start_flush(&self) -> StoreResult<()> {
        // The flag stays set: the next logged write waits for this flush.
        self.flush_all(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let env = RocksEnv::new(RocksConfig::default()).unwrap();
        let dirs = std::cell::RefCell::new(Vec::new());
        super::super::conformance::run_all(&mut || {
            let dir = tempfile::tempdir().unwrap();
            let store = RocksStore::open(dir.path(), &env).unwrap();
            dirs.borrow_mut().push(dir);
            store
        });
    }

    #[test]
    fn reopen_keeps_written_batches() {
        let env = RocksEnv::new(RocksConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStore::open(dir.path(), &env).unwrap();
            let mut b = s.batch();
            b.put(Cf::Latest, b"k", b"v");
            b.put(Cf::Meta, b"m", b"1");
            s.write(b).unwrap();
        }
        let s = RocksStore::open(dir.path(), &env).unwrap();
        assert_eq!(s.get(Cf::Latest, b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(s.get(Cf::Meta, b"m").unwrap().as_deref(), Some(&b"1"[..]));
    }
}
