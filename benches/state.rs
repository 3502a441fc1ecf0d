//! The versioned store against raw RocksDB, measured in the same run.
//!
//! Every figure is reported next to a baseline taken in the same process on
//! the same disk, and as a ratio to it: committed puts/s against plain
//! `WriteBatch`es (and against raw RocksDB writing strata's own column
//! families, which separates the layout's cost from strata's), latest-get
//! latency against `DB::get`, as-of reads on a key with many versions against
//! one with few, a key's history against a raw iterator over as many adjacent
//! keys, and a rewind on a large table against the same rewind on a small one
//! and against a tenth of the changes. Nothing here asserts a time; the
//! ratios are for a person (and `docs/benchmarks.md`) to judge.
//!
//! The raw database is opened with the options of `RocksEnv` that matter for
//! these workloads: same block cache size, write-buffer budget charged to that
//! cache, memtable size, lz4 (zstd at the bottom), bloom filter on point-lookup
//! data, index and filter blocks in the cache, WAL on, same batch size. It gets
//! its own cache of the same size so neither store warms the other's.
//!
//! Sizes come from defaults, then `--quick`, then `STRATA_BENCH_*` variables,
//! then command-line flags (`cargo bench --bench state -- --help`).

// A benchmark: panics on a failed step, prints its figures, measures raw RocksDB as its baseline and exits with a usage error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

#[path = "common/knobs.rs"]
mod knobs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rocksdb::{
    BlockBasedOptions, Cache, DB, DBCompressionType, Options, WriteBatch, WriteBufferManager,
    WriteOptions,
};
use strata_state::layout::{self, Entry, EntryKind, VersionRecord};
use strata_state::store::RocksStore;
use strata_state::store::rocks::{RocksConfig, RocksEnv};
use strata_state::{
    At, HistoryQuery, KeyRange, Partition, PartitionReader, TableConfig, TableName, TablePartition,
    Timestamp, Version, VersionFlags,
};

const KEY_BYTES: usize = 16;

/// Workload sizes.
#[derive(Clone, Debug)]
struct Sizes {
    keys: usize,
    small_keys: usize,
    batch: usize,
    value_bytes: usize,
    gets: usize,
    versions: usize,
    few_versions: usize,
    as_of_reads: usize,
    history_calls: usize,
    changes: usize,
    rewind_reps: usize,
    seed: u64,
    dir: PathBuf,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            keys: 1_000_000,
            small_keys: 100_000,
            batch: 1_000,
            value_bytes: 32,
            gets: 200_000,
            versions: 1_000,
            few_versions: 10,
            as_of_reads: 50_000,
            history_calls: 2_000,
            changes: 10_000,
            rewind_reps: 5,
            seed: 42,
            dir: std::env::temp_dir(),
        }
    }

    fn quick() -> Sizes {
        Sizes {
            keys: 100_000,
            small_keys: 10_000,
            gets: 20_000,
            as_of_reads: 5_000,
            history_calls: 200,
            changes: 1_000,
            ..Sizes::full()
        }
    }
}

/// (flag, environment variable, help): every size can be set either way.
const KNOBS: &[knobs::Knob] = &[
    (
        "--keys",
        "STRATA_BENCH_KEYS",
        "distinct keys in the large table (1,000,000)",
    ),
    (
        "--small-keys",
        "STRATA_BENCH_SMALL_KEYS",
        "keys in the small table of the rewind comparison (100,000)",
    ),
    (
        "--batch",
        "STRATA_BENCH_BATCH",
        "puts per commit / WriteBatch (1,000)",
    ),
    (
        "--value-bytes",
        "STRATA_BENCH_VALUE_BYTES",
        "value size (32)",
    ),
    (
        "--gets",
        "STRATA_BENCH_GETS",
        "latest gets measured per store (200,000)",
    ),
    (
        "--versions",
        "STRATA_BENCH_VERSIONS",
        "versions of the deep key (1,000)",
    ),
    (
        "--few-versions",
        "STRATA_BENCH_FEW_VERSIONS",
        "versions of the shallow key (10)",
    ),
    (
        "--as-of-reads",
        "STRATA_BENCH_AS_OF_READS",
        "as-of reads measured per key (50,000)",
    ),
    (
        "--history-calls",
        "STRATA_BENCH_HISTORY_CALLS",
        "history calls measured (2,000)",
    ),
    (
        "--changes",
        "STRATA_BENCH_CHANGES",
        "keys changed before each rewind (10,000)",
    ),
    (
        "--rewind-reps",
        "STRATA_BENCH_REWIND_REPS",
        "rewinds per table (5)",
    ),
    ("--seed", "STRATA_BENCH_SEED", "random seed (42)"),
    (
        "--dir",
        "STRATA_BENCH_DIR",
        "where the temporary databases go (the system temp dir)",
    ),
];

fn set(s: &mut Sizes, flag: &str, raw: &str) -> Result<()> {
    let n = || {
        raw.replace('_', "")
            .parse::<usize>()
            .with_context(|| format!("{flag}: {raw:?} is not a count"))
    };
    match flag {
        "--keys" => s.keys = n()?,
        "--small-keys" => s.small_keys = n()?,
        "--batch" => s.batch = n()?,
        "--value-bytes" => s.value_bytes = n()?,
        "--gets" => s.gets = n()?,
        "--versions" => s.versions = n()?,
        "--few-versions" => s.few_versions = n()?,
        "--as-of-reads" => s.as_of_reads = n()?,
        "--history-calls" => s.history_calls = n()?,
        "--changes" => s.changes = n()?,
        "--rewind-reps" => s.rewind_reps = n()?,
        "--seed" => s.seed = n()? as u64,
        "--dir" => s.dir = PathBuf::from(raw),
        _ => bail!("unknown option {flag}"),
    }
    Ok(())
}

fn parse_sizes() -> Result<Sizes> {
    let s = knobs::parse(
        "state",
        KNOBS,
        |quick| if quick { Sizes::quick() } else { Sizes::full() },
        set,
    )?;
    if s.batch == 0
        || s.keys == 0
        || s.small_keys == 0
        || s.changes == 0
        || s.changes > s.small_keys
    {
        bail!("sizes must be positive and --changes at most --small-keys: {s:?}");
    }
    if s.few_versions == 0 || s.few_versions > s.versions || s.versions < 2 || s.value_bytes < 8 {
        bail!(
            "need 1 <= --few-versions <= --versions, --versions >= 2 and --value-bytes >= 8: {s:?}"
        );
    }
    Ok(s)
}

// ---------------------------------------------------------------- data

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Key `i`: 16 bytes, a hash then the index, so keys arrive in random order
/// and never collide.
fn key(i: usize) -> [u8; KEY_BYTES] {
    let mut k = [0u8; KEY_BYTES];
    k[..8].copy_from_slice(&mix(i as u64).to_be_bytes());
    k[8..].copy_from_slice(&(i as u64).to_be_bytes());
    k
}

/// Value of key `i` in round `round`: incompressible bytes.
fn value(i: usize, round: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut x = mix((i as u64) ^ (round << 40));
    while out.len() < len {
        x = mix(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
}

// ---------------------------------------------------------------- stores

/// The same settings `RocksEnv` applies, for a plain one-family database.
struct RawDb {
    db: DB,
    write_opts: WriteOptions,
    _cache: Cache,
}

/// Column families of [`RawDb::open_layout`], named as strata names them.
const LAYOUT_CFS: [&str; 3] = ["latest", "history", "versions"];

impl RawDb {
    /// One column family (`default`) with a bloom filter: the plain baseline.
    fn open(path: &Path, c: &RocksConfig) -> Result<RawDb> {
        RawDb::open_with(path, c, &[])
    }

    /// strata's data column families, without strata: what its layout costs
    /// RocksDB on its own.
    fn open_layout(path: &Path, c: &RocksConfig) -> Result<RawDb> {
        RawDb::open_with(path, c, &LAYOUT_CFS)
    }

    fn open_with(path: &Path, c: &RocksConfig, cfs: &[&str]) -> Result<RawDb> {
        let cache = Cache::new_lru_cache(c.block_cache_bytes);
        let wbm = WriteBufferManager::new_write_buffer_manager_with_cache(
            c.write_buffer_budget_bytes,
            false,
            cache.clone(),
        );
        let cf_options = |bloom: bool| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if bloom {
                table.set_bloom_filter(10.0, false);
            }
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(c.write_buffer_bytes);
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            o
        };
        let mut o = cf_options(true);
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_atomic_flush(!cfs.is_empty());
        o.set_max_open_files(c.max_open_files);
        o.set_max_background_jobs(c.background_jobs);
        o.set_write_buffer_manager(&wbm);
        o.set_paranoid_checks(true);
        o.set_keep_log_file_num(2);
        // As in `RocksEnv`: a bloom filter only where point lookups go.
        let descriptors = cfs
            .iter()
            .map(|n| rocksdb::ColumnFamilyDescriptor::new(*n, cf_options(*n == "latest")));
        let db = DB::open_cf_descriptors(&o, path, descriptors).context("open raw RocksDB")?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(!c.wal);
        Ok(RawDb {
            db,
            write_opts,
            _cache: cache,
        })
    }

    /// Flushes memtables and waits for background compactions to finish, so
    /// the next measurement does not share the CPU with them.
    fn settle(&self) -> Result<Duration> {
        let t = Instant::now();
        let cfs: Vec<_> = LAYOUT_CFS
            .iter()
            .filter_map(|n| self.db.cf_handle(n))
            .collect();
        if cfs.is_empty() {
            self.db.flush()?
        } else {
            self.db
                .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?
        }
        let busy = |p: &str| self.db.property_int_value(p).map(|v| v.unwrap_or(0) > 0);
        while busy("rocksdb.num-running-compactions")?
            || busy("rocksdb.compaction-pending")?
            || busy("rocksdb.num-running-flushes")?
            || busy("rocksdb.mem-table-flush-pending")?
        {
            if t.elapsed() > Duration::from_secs(300) {
                bail!("raw RocksDB still compacting after 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t.elapsed())
    }
}

type Table = TablePartition<RocksStore>;

fn open_table(env: &RocksEnv, path: &Path) -> Result<Table> {
    let store = RocksStore::open(path, env)?;
    Ok(TablePartition::open(
        store,
        TableConfig::new(TableName::new("bench")?, Partition(0)),
    )?)
}

/// The commit clock: strictly increasing fake milliseconds.
struct Clock(u64);

impl Clock {
    fn tick(&mut self) -> Timestamp {
        self.0 += 1;
        Timestamp(self.0)
    }
}

// ---------------------------------------------------------------- measuring

fn histogram() -> Histogram<u64> {
    // 1 ns to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static histogram bounds are valid")
}

fn timed<T>(h: &mut Histogram<u64>, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    h.saturating_record(t.elapsed().as_nanos() as u64);
    out
}

fn p(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

fn ns(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.2} ms", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.1} µs", v as f64 / 1e3)
    } else {
        format!("{v} ns")
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line of the results table.
struct Row {
    what: String,
    strata: String,
    baseline: String,
    ratio: String,
    aim: String,
}

fn row(what: &str, strata: String, baseline: String, ratio: String, aim: String) -> Row {
    Row {
        what: what.into(),
        strata,
        baseline,
        ratio,
        aim,
    }
}

fn verdict(ok: bool, aim: &str) -> String {
    format!("{aim}: {}", if ok { "met" } else { "MISSED" })
}

// ---------------------------------------------------------------- phases

/// Loads keys `0..n` in batches: versioned puts then one commit per batch.
fn load_table(
    t: &mut Table,
    s: &Sizes,
    n: usize,
    clock: &mut Clock,
    commits: &mut Histogram<u64>,
) -> Result<Duration> {
    let mut v = Vec::with_capacity(s.value_bytes);
    let start = Instant::now();
    for lo in (0..n).step_by(s.batch) {
        let b = Instant::now();
        for i in lo..(lo + s.batch).min(n) {
            value(i, 0, s.value_bytes, &mut v);
            t.put(&key(i), &v, None);
        }
        t.commit(clock.tick(), &[])?;
        commits.saturating_record(b.elapsed().as_nanos() as u64);
    }
    Ok(start.elapsed())
}

/// Loads keys `0..n` into the raw database in `WriteBatch`es of the same size.
fn load_raw(r: &RawDb, s: &Sizes, n: usize, batches: &mut Histogram<u64>) -> Result<Duration> {
    let mut v = Vec::with_capacity(s.value_bytes);
    let start = Instant::now();
    for lo in (0..n).step_by(s.batch) {
        let b = Instant::now();
        let mut wb = WriteBatch::default();
        for i in lo..(lo + s.batch).min(n) {
            value(i, 0, s.value_bytes, &mut v);
            wb.put(key(i), &v);
        }
        r.db.write_opt(wb, &r.write_opts)?;
        batches.saturating_record(b.elapsed().as_nanos() as u64);
    }
    Ok(start.elapsed())
}

/// Loads keys `0..n` into strata's column families the way a commit writes
/// them (entry in `latest` and `history`, record in `versions`), but with
/// plain `WriteBatch`es: RocksDB's cost of the layout, without strata.
fn load_layout(r: &RawDb, s: &Sizes, n: usize, batches: &mut Histogram<u64>) -> Result<Duration> {
    let handle = |name| {
        r.db.cf_handle(name)
            .with_context(|| format!("column family {name}"))
    };
    let (latest, history, versions) = (handle("latest")?, handle("history")?, handle("versions")?);
    let mut v = Vec::with_capacity(s.value_bytes);
    let start = Instant::now();
    for lo in (0..n).step_by(s.batch) {
        let b = Instant::now();
        let mut wb = WriteBatch::default();
        for i in lo..(lo + s.batch).min(n) {
            value(i, 0, s.value_bytes, &mut v);
            let (k, version, time) = (
                key(i),
                Version(i as u64 + 1),
                Timestamp((lo / s.batch) as u64 + 1),
            );
            let entry = Entry {
                version,
                time,
                flags: VersionFlags::NONE,
                kind: EntryKind::Value,
                lineage: None,
                value: v.clone(),
            }
            .encode();
            wb.put_cf(latest, k, &entry);
            wb.put_cf(history, layout::history_key(&k, version), &entry);
            let rec = VersionRecord {
                time,
                flags: VersionFlags::NONE,
                deleted: false,
                changelog_offset: None,
                key: k.to_vec(),
            };
            wb.put_cf(versions, layout::version_key(version), rec.encode());
        }
        r.db.write_opt(wb, &r.write_opts)?;
        batches.saturating_record(b.elapsed().as_nanos() as u64);
    }
    Ok(start.elapsed())
}

/// Latest gets of random keys, alternating between the stores so that
/// background work and cache state hit both alike.
fn latest_gets(
    reader: &PartitionReader<RocksStore>,
    raw: &RawDb,
    s: &Sizes,
    rng: &mut StdRng,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let (mut hs, mut hr) = (histogram(), histogram());
    let warmup = s.gets / 10;
    let mut expect = Vec::new();
    for n in 0..warmup + s.gets {
        let i = rng.random_range(0..s.keys);
        let k = key(i);
        let (a, b) = if n < warmup {
            (reader.get(&k)?, raw.db.get(k)?)
        } else {
            let a = timed(&mut hs, || reader.get(&k))?;
            let b = timed(&mut hr, || raw.db.get(k))?;
            (a, b)
        };
        value(i, 0, s.value_bytes, &mut expect);
        if a.map(|x| x.value).as_ref() != Some(&expect) || b.as_ref() != Some(&expect) {
            bail!("latest get of key {i} returned the wrong value");
        }
    }
    Ok((hs, hr))
}

/// Commits `s.versions` versions of a deep key and `s.few_versions` of a
/// shallow one, spread over the same version range. Returns the first
/// version of that range.
fn write_versions(
    t: &mut Table,
    s: &Sizes,
    clock: &mut Clock,
    deep: &[u8],
    shallow: &[u8],
) -> Result<Version> {
    let first = t.latest_version().next();
    let every = s.versions / s.few_versions;
    let mut v = Vec::new();
    for r in 0..s.versions {
        value(r, 7, s.value_bytes, &mut v);
        t.put(deep, &v, None);
        if r % every == 0 && r / every < s.few_versions {
            t.put(shallow, &v, None);
        }
        t.commit(clock.tick(), &[])?;
    }
    Ok(first)
}

/// Rewinds the `changes` keys just changed: returns (rewind plan+stage,
/// commit) times.
fn change_and_rewind(
    t: &mut Table,
    s: &Sizes,
    n: usize,
    changes: usize,
    clock: &mut Clock,
    rng: &mut StdRng,
    round: u64,
) -> Result<(Duration, Duration)> {
    let target = t.latest_version();
    let picked = rand::seq::index::sample(rng, n, changes).into_vec();
    let mut v = Vec::new();
    for chunk in picked.chunks(s.batch) {
        for &i in chunk {
            value(i, round, s.value_bytes, &mut v);
            t.put(&key(i), &v, None);
        }
        t.commit(clock.tick(), &[])?;
    }
    // No flush: the changes stay in memtables and the loaded state in files,
    // alike on both tables, whatever the number of rewinds so far.
    let a = Instant::now();
    let plan = t.rewind(At::Version(target), &KeyRange::all())?;
    let planned = a.elapsed();
    let b = Instant::now();
    t.commit(clock.tick(), &[])?;
    let committed = b.elapsed();
    if plan.changes.len() != changes {
        bail!(
            "rewind planned {} changes, expected {changes}",
            plan.changes.len()
        );
    }
    let i = picked[0];
    value(i, 0, s.value_bytes, &mut v);
    if t.reader().get(&key(i))?.map(|x| x.value) != Some(v) {
        bail!("key {i} does not hold its pre-change value after the rewind");
    }
    Ok((planned, committed))
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------- main

/// The 1-minute load average: other work on the machine skews every number.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn print_command() {
    let argv: Vec<String> = std::env::args().collect();
    let vars: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("STRATA_BENCH_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let prefix: String = vars.iter().map(|v| format!("{v} ")).collect();
    let args: Vec<&str> = argv
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    let tail = if args.is_empty() {
        String::new()
    } else {
        format!(" -- {}", args.join(" "))
    };
    println!("command: {prefix}cargo bench --bench state{tail}");
    println!("binary:  {prefix}{}", argv.join(" "));
}

/// Everything the phases share.
struct Bench {
    s: Sizes,
    config: RocksConfig,
    root: tempfile::TempDir,
    rng: StdRng,
    env: RocksEnv,
    raw: RawDb,
    table: Table,
    clock: Clock,
    rows: Vec<Row>,
    /// Raw latest-get latencies, the reference for as-of reads too.
    raw_gets: Histogram<u64>,
}

impl Bench {
    /// A row comparing two latency histograms at quantile `q`.
    fn latency_row(
        &mut self,
        what: &str,
        a: &Histogram<u64>,
        b: &Histogram<u64>,
        q: f64,
        aim: Option<(f64, &str)>,
    ) {
        let ratio = p(a, q) as f64 / p(b, q) as f64;
        let aim = aim
            .map(|(max, text)| verdict(ratio <= max, text))
            .unwrap_or_default();
        self.rows.push(row(
            what,
            ns(p(a, q)),
            ns(p(b, q)),
            format!("{ratio:.2}x"),
            aim,
        ));
    }

    /// Phase 1, committed puts. The raw loads run first and are left to finish
    /// their compactions, so the versioned load does not pay for them.
    fn puts(&mut self) -> Result<()> {
        let s = &self.s;
        println!(
            "\n[1/5] loading {} keys in batches of {} ...",
            s.keys, s.batch
        );
        let (mut raw_batches, mut layout_batches, mut commits) =
            (histogram(), histogram(), histogram());
        let raw_load = load_raw(&self.raw, s, s.keys, &mut raw_batches)?;
        let raw_settle = self.raw.settle()?;
        let layout_load = {
            let layout_db = RawDb::open_layout(&self.root.path().join("raw-layout"), &self.config)?;
            let d = load_layout(&layout_db, s, s.keys, &mut layout_batches)?;
            layout_db.settle()?;
            d
        };
        let strata_load = load_table(&mut self.table, s, s.keys, &mut self.clock, &mut commits)?;
        let t = Instant::now();
        self.table.flush()?;
        let strata_flush = t.elapsed();
        println!(
            "      raw {:.2} s (+{:.2} s flush and compactions), raw with strata's layout {:.2} s, \
             strata {:.2} s (+{:.2} s flush)",
            raw_load.as_secs_f64(),
            raw_settle.as_secs_f64(),
            layout_load.as_secs_f64(),
            strata_load.as_secs_f64(),
            strata_flush.as_secs_f64()
        );
        let (sr, rr, lr) = (
            rate(s.keys, strata_load),
            rate(s.keys, raw_load),
            rate(s.keys, layout_load),
        );
        let what = format!("committed puts/s ({} keys, batches of {})", s.keys, s.batch);
        let pct = |x: f64, y: f64, of: &str| format!("{:.0}% of {of}", 100.0 * x / y);
        self.rows.push(row(
            &what,
            thousands(sr),
            thousands(rr),
            pct(sr, rr, "raw"),
            verdict(sr >= 0.5 * rr, ">= 50%"),
        ));
        let what = "  vs raw RocksDB writing strata's 3 column families";
        self.rows.push(row(
            what,
            thousands(sr),
            thousands(lr),
            pct(sr, lr, "raw-layout"),
            String::new(),
        ));
        self.latency_row(
            "  commit / WriteBatch latency p50",
            &commits,
            &raw_batches,
            0.5,
            None,
        );
        self.latency_row(
            "  commit / WriteBatch latency p99",
            &commits,
            &raw_batches,
            0.99,
            None,
        );
        Ok(())
    }

    /// Phase 2, latest gets.
    fn gets(&mut self) -> Result<()> {
        println!("[2/5] {} latest gets per store ...", self.s.gets);
        let (hs, hr) = latest_gets(&self.table.reader(), &self.raw, &self.s, &mut self.rng)?;
        self.latency_row(
            &format!("latest get p50 ({} random keys)", self.s.gets),
            &hs,
            &hr,
            0.5,
            Some((1.5, "<= 1.5x")),
        );
        self.latency_row("latest get p99", &hs, &hr, 0.99, None);
        self.raw_gets = hr;
        Ok(())
    }

    /// Phases 3 and 4: a deep and a shallow key, then as-of reads and history.
    fn versions(&mut self) -> Result<()> {
        let s = &self.s;
        println!(
            "[3/5] {} as-of reads on a key with {} versions and on one with {} ...",
            s.as_of_reads, s.versions, s.few_versions
        );
        let (deep, shallow) = (*b"deep-key-0000000", *b"shallow-key-0000");
        let first = write_versions(&mut self.table, s, &mut self.clock, &deep, &shallow)?;
        // Raw baseline for history: as many adjacent keys, one per version.
        let (mut v, mut wb) = (Vec::new(), WriteBatch::default());
        for r in 0..s.versions {
            value(r, 7, s.value_bytes, &mut v);
            wb.put([&b"hist-"[..], &(r as u64).to_be_bytes()].concat(), &v);
        }
        self.raw.db.write_opt(wb, &self.raw.write_opts)?;
        self.table.flush()?;
        self.raw.settle()?;
        let reader = self.table.reader();
        let latest = self.table.latest_version();
        let (mut hd, mut hsh) = (histogram(), histogram());
        for n in 0..s.as_of_reads * 11 / 10 {
            // From the first commit's end (both keys exist) to before the
            // latest version (which `get_at` serves from the latest table).
            let at = At::Version(Version(self.rng.random_range(first.0 + 1..latest.0)));
            let (a, b) = if n < s.as_of_reads / 10 {
                (reader.get_at(&deep, at)?, reader.get_at(&shallow, at)?)
            } else {
                (
                    timed(&mut hd, || reader.get_at(&deep, at))?,
                    timed(&mut hsh, || reader.get_at(&shallow, at))?,
                )
            };
            if a.is_none() || b.is_none() {
                bail!("as-of read at {at:?} found nothing");
            }
        }

        println!(
            "[4/5] {} history calls of {} versions ...",
            s.history_calls, s.versions
        );
        let q = HistoryQuery {
            limit: s.versions,
            ..HistoryQuery::default()
        };
        let (mut hh, mut hi) = (histogram(), histogram());
        let raw = &self.raw;
        for n in 0..s.history_calls * 11 / 10 {
            let warm = n < s.history_calls / 10;
            let got = if warm {
                reader.history(&deep, &q)?
            } else {
                timed(&mut hh, || reader.history(&deep, &q))?
            };
            let scan = || -> Result<usize> {
                let mut it = raw.db.raw_iterator();
                it.seek(b"hist-");
                let mut out = Vec::with_capacity(s.versions);
                while it.valid() && out.len() < s.versions {
                    out.push(it.value().unwrap_or_default().to_vec());
                    it.next();
                }
                it.status()?;
                Ok(out.len())
            };
            let scanned = if warm { scan()? } else { timed(&mut hi, scan)? };
            if got.entries.len() != s.versions || scanned != s.versions {
                bail!(
                    "history returned {} entries and the raw scan {scanned}, not {}",
                    got.entries.len(),
                    s.versions
                );
            }
        }

        let (versions, few) = (s.versions, s.few_versions);
        let what = format!("get_at(random version) p50, {versions} vs {few} versions");
        self.latency_row(&what, &hd, &hsh, 0.5, Some((1.5, "flat (<= 1.5x)")));
        self.latency_row("get_at p99", &hd, &hsh, 0.99, None);
        let raw_gets = std::mem::replace(&mut self.raw_gets, histogram());
        self.latency_row(
            "get_at p50 (deep key) vs raw latest get p50",
            &hd,
            &raw_gets,
            0.5,
            None,
        );
        self.latency_row(
            &format!("history(1 key, {versions} versions) p50"),
            &hh,
            &hi,
            0.5,
            None,
        );
        self.latency_row("history p99", &hh, &hi, 0.99, None);
        let per_entry = |h: &Histogram<u64>| ns(p(h, 0.5) / versions as u64);
        self.rows.push(row(
            "  history per entry p50",
            per_entry(&hh),
            per_entry(&hi),
            String::new(),
            String::new(),
        ));
        Ok(())
    }

    /// Phase 5, rewinds: on the large table, on a small one, and of a tenth
    /// of the changes on the large one (the time should drop about tenfold
    /// if it follows the changes).
    fn rewinds(&mut self) -> Result<()> {
        let s = &self.s;
        println!(
            "[5/5] rewinding {} changed keys on {} and {} keys, {} times each ...",
            s.changes, s.keys, s.small_keys, s.rewind_reps
        );
        let mut small = open_table(&self.env, &self.root.path().join("small"))?;
        let mut small_clock = Clock(0);
        load_table(
            &mut small,
            s,
            s.small_keys,
            &mut small_clock,
            &mut histogram(),
        )?;
        small.flush()?;
        let tenth = (s.changes / 10).max(1);
        let (mut big, mut sm, mut tenths) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..s.rewind_reps as u64 {
            let (t, clock, rng) = (&mut self.table, &mut self.clock, &mut self.rng);
            big.push(change_and_rewind(
                t,
                s,
                s.keys,
                s.changes,
                clock,
                rng,
                100 + r,
            )?);
            sm.push(change_and_rewind(
                &mut small,
                s,
                s.small_keys,
                s.changes,
                &mut small_clock,
                rng,
                100 + r,
            )?);
            tenths.push(change_and_rewind(t, s, s.keys, tenth, clock, rng, 200 + r)?);
        }
        type Split = (Duration, Duration);
        let med = |v: &[Split], f: fn(&Split) -> Duration| median(v.iter().map(f).collect());
        type Pick = fn(&Split) -> Duration;
        let (total, plan, commit): (Pick, Pick, Pick) = (|x| x.0 + x.1, |x| x.0, |x| x.1);
        let (bt, st, tt) = (med(&big, total), med(&sm, total), med(&tenths, total));
        let ratio = bt.as_secs_f64() / st.as_secs_f64();
        let what = format!(
            "rewind {} changes + commit, {} vs {} keys (median)",
            s.changes, s.keys, s.small_keys
        );
        self.rows.push(row(
            &what,
            ms(bt),
            ms(st),
            format!("{ratio:.2}x"),
            verdict(ratio <= 1.5, "near 1 (<= 1.5x)"),
        ));
        let none = String::new;
        self.rows.push(row(
            "  of which plan + stage (median)",
            ms(med(&big, plan)),
            ms(med(&sm, plan)),
            none(),
            none(),
        ));
        self.rows.push(row(
            "  of which commit (median)",
            ms(med(&big, commit)),
            ms(med(&sm, commit)),
            none(),
            none(),
        ));
        let what = format!(
            "rewind {} vs {tenth} changes + commit, {} keys (median)",
            s.changes, s.keys
        );
        let aim = format!("changes ratio {:.1}x", s.changes as f64 / tenth as f64);
        self.rows.push(row(
            &what,
            ms(bt),
            ms(tt),
            format!("{:.1}x", bt.as_secs_f64() / tt.as_secs_f64()),
            aim,
        ));
        let keys_per_s = thousands(s.changes as f64 / bt.as_secs_f64());
        self.rows.push(row(
            "  rewound keys/s (large table)",
            keys_per_s,
            none(),
            none(),
            none(),
        ));

        // What the plan does per changed key, on each table: a latest get
        // and a read at the target version (a history seek).
        let (big_r, small_r) = (self.table.reader(), small.reader());
        let (big_v, small_v) = (
            Version(big_r.latest_version().0 - 1),
            Version(small_r.latest_version().0 - 1),
        );
        let (mut hb, mut hs) = (histogram(), histogram());
        let lookups = |r: &PartitionReader<RocksStore>, k: &[u8], v: Version| -> Result<()> {
            let (now, then) = (r.get(k)?, r.get_at(k, At::Version(v))?);
            if now.is_none() || then.is_none() {
                bail!("a loaded key is missing");
            }
            Ok(())
        };
        for _ in 0..s.gets / 10 {
            let (kb, ks) = (
                key(self.rng.random_range(0..s.keys)),
                key(self.rng.random_range(0..s.small_keys)),
            );
            timed(&mut hb, || lookups(&big_r, &kb, big_v))?;
            timed(&mut hs, || lookups(&small_r, &ks, small_v))?;
        }
        let what = format!(
            "  per-key lookups of a plan (get + get_at) p50, {} vs {} keys",
            s.keys, s.small_keys
        );
        self.latency_row(&what, &hb, &hs, 0.5, None);
        Ok(())
    }

    fn report(&self) {
        println!(
            "\nload:    {} (1-minute load average at end)\n",
            load_average()
        );
        println!("| measurement | strata | baseline | ratio | aim |");
        println!("|---|---:|---:|---:|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                r.what, r.strata, r.baseline, r.ratio, r.aim
            );
        }
        println!(
            "\nbaseline column: puts and latest gets: raw RocksDB (one column family; the second puts row: raw \
             RocksDB writing strata's latest/history/versions entries); get_at: the key with {} versions; history: \
             a raw iterator over {} adjacent keys; rewind: the {}-key table, then a tenth of the changes",
            self.s.few_versions, self.s.versions, self.s.small_keys
        );
    }
}

fn main() -> Result<()> {
    let s = parse_sizes()?;
    print_command();
    let config = RocksConfig::default();
    println!("sizes:   {s:?}");
    println!("rocks:   {config:?}");
    let root = tempfile::Builder::new()
        .prefix("strata-bench-")
        .tempdir_in(&s.dir)
        .context("temp dir")?;
    println!("dir:     {}", root.path().display());
    println!(
        "load:    {} (1-minute load average at start)",
        load_average()
    );
    let env = RocksEnv::new(config.clone())?;
    let mut b = Bench {
        rng: StdRng::seed_from_u64(s.seed),
        raw: RawDb::open(&root.path().join("raw"), &config)?,
        table: open_table(&env, &root.path().join("large"))?,
        clock: Clock(0),
        rows: Vec::new(),
        raw_gets: histogram(),
        s,
        config,
        root,
        env,
    };
    b.puts()?;
    b.gets()?;
    b.versions()?;
    b.rewinds()?;
    b.report();
    Ok(())
}
