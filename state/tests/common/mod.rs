//! Shared test support: store factories for both implementations and a
//! macro that runs one test body against each.

#![allow(dead_code)]

use strata_state::store::rocks::RocksConfig;
use strata_state::store::{KvStore, MemoryStore, RocksEnv, RocksStore};
use strata_state::{Partition, TableConfig, TableName, TablePartition};

/// Makes stores and reopens them as a restarted process would.
pub trait Harness {
    type S: KvStore;
    /// A fresh, empty store.
    fn fresh(&mut self) -> Self::S;
    /// Drops `store` (losing nothing that was written) and opens it again.
    fn reopen(&mut self, store: Self::S) -> Self::S;
    /// A name for messages.
    fn name(&self) -> &'static str;
}

#[derive(Default)]
pub struct Mem;

impl Harness for Mem {
    type S = MemoryStore;
    fn fresh(&mut self) -> MemoryStore {
        MemoryStore::new()
    }
    fn reopen(&mut self, store: MemoryStore) -> MemoryStore {
        let again = store.clone();
        drop(store);
        again
    }
    fn name(&self) -> &'static str {
        "memory"
    }
}

pub struct Rocks {
    pub env: RocksEnv,
    pub dirs: Vec<tempfile::TempDir>,
}

impl Rocks {
    pub fn new() -> Rocks {
        let config = RocksConfig {
            block_cache_bytes: 8 << 20,
            write_buffer_budget_bytes: 8 << 20,
            write_buffer_bytes: 1 << 20,
            ..RocksConfig::default()
        };
        Rocks {
            env: RocksEnv::new(config).unwrap(),
            dirs: Vec::new(),
        }
    }
}

impl Harness for Rocks {
    type S = RocksStore;
    fn fresh(&mut self) -> RocksStore {
        let dir = tempfile::tempdir().unwrap();
        let s = RocksStore::open(dir.path(), &self.env).unwrap();
        self.dirs.push(dir);
        s
    }
    fn reopen(&mut self, store: RocksStore) -> RocksStore {
        let path = store.path().to_path_buf();
        drop(store);
        RocksStore::open(&path, &self.env).unwrap()
    }
    fn name(&self) -> &'static str {
        "rocksdb"
    }
}

pub fn config(name: &str, p: u32) -> TableConfig {
    TableConfig::new(TableName::new(name).unwrap(), Partition(p))
}

pub fn open<S: KvStore>(store: S, cfg: TableConfig) -> TablePartition<S> {
    TablePartition::open(store, cfg).unwrap()
}

/// Runs `$body(&mut impl Harness)` once per store implementation.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn memory() { super::$name(&mut super::common::Mem); }
            #[test]
            fn rocksdb() { super::$name(&mut super::common::Rocks::new()); }
        }
    )*};
}
