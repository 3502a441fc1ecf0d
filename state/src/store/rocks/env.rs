//! Process-wide RocksDB resources shared by every table partition: one
//! block cache, one write-buffer budget charged to that cache, and the
//! options each partition's database is opened with.

use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteBufferManager};

use crate::store::Cf;

/// Memory and durability settings shared by all partition stores.
#[derive(Clone, Debug)]
pub struct RocksConfig {
    /// Block cache shared by all partitions, in bytes.
    pub block_cache_bytes: usize,
    /// Memtable budget shared by all partitions, in bytes; charged to the
    /// block cache so the two together stay under one limit.
    pub write_buffer_budget_bytes: usize,
    /// Size of one memtable, in bytes.
    pub write_buffer_bytes: usize,
    /// Open files per partition (-1: unlimited).
    pub max_open_files: i32,
    /// Background flush and compaction threads.
    pub background_jobs: i32,
    /// Write-ahead log on: a commit survives a process crash on its own.
    /// Off: a crash loses commits not yet flushed, and the engine replays
    /// them from the changelog (files still hold only whole batches).
    pub wal: bool,
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            block_cache_bytes: 256 << 20,
            write_buffer_budget_bytes: 128 << 20,
            write_buffer_bytes: 32 << 20,
            max_open_files: 256,
            background_jobs: 2,
            wal: true,
        }
    }
}

impl RocksConfig {
    /// Checks the settings, naming the offending key.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |key: &str, reason: &str| {
            Err(crate::Error::InvalidConfig {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.block_cache_bytes < (1 << 20) {
            return bad("state.block_cache_bytes", "must be at least 1 MiB");
        }
        if self.write_buffer_bytes < (64 << 10) {
            return bad("state.write_buffer_bytes", "must be at least 64 KiB");
        }
        if self.write_buffer_budget_bytes < self.write_buffer_bytes {
            return bad(
                "state.write_buffer_budget_bytes",
                "must be at least state.write_buffer_bytes",
            );
        }
        if self.write_buffer_budget_bytes > self.block_cache_bytes {
            return bad(
                "state.write_buffer_budget_bytes",
                "must not exceed state.block_cache_bytes: memtables are charged to the block cache",
            );
        }
        if self.background_jobs < 1 {
            return bad("state.background_jobs", "must be at least 1");
        }
        if self.max_open_files == 0 || self.max_open_files < -1 {
            return bad("state.max_open_files", "must be -1 (unlimited) or positive");
        }
        Ok(())
    }
}

/// Shared RocksDB resources; create one per process and open every
/// partition store with it.
#[derive(Clone)]
pub struct RocksEnv {
    config: RocksConfig,
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl std::fmt::Debug for RocksEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEnv")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RocksEnv {
    /// Creates the shared cache and write-buffer budget.
    pub fn new(config: RocksConfig) -> crate::Result<RocksEnv> {
        config.validate()?;
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            config.write_buffer_budget_bytes,
            false,
            cache.clone(),
        );
        Ok(RocksEnv {
            config,
            cache,
            write_buffers,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &RocksConfig {
        &self.config
    }

    /// Bytes currently used by the shared block cache (memtables included).
    pub fn cache_usage_bytes(&self) -> usize {
        self.cache.get_usage()
    }

    /// Bytes currently used by memtables across all partitions.
    pub fn write_buffer_usage_bytes(&self) -> usize {
        self.write_buffers.get_usage()
    }

    pub(super) fn db_options(&self) -> Options {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_atomic_flush(true);
        o.set_max_open_files(self.config.max_open_files);
        o.set_max_background_jobs(self.config.background_jobs);
        o.set_write_buffer_manager(&self.write_buffers);
        o.set_paranoid_checks(true);
        o.set_keep_log_file_num(2);
        o
    }

    pub(super) fn cf_options(&self, cf: Cf) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        if matches!(cf, Cf::Latest | Cf::Meta) {
            // Point lookups: a whole-key bloom filter skips files without the key.
            table.set_bloom_filter(10.0, false);
        }
        let mut o = Options::default();
        o.set_block_based_table_factory(&table);
        o.set_write_buffer_size(self.config.write_buffer_bytes);
        o.set_compression_type(DBCompressionType::Lz4);
        o.set_bottommost_compression_type(DBCompressionType::Zstd);
        o
    }
}
