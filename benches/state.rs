//! The versioned store against raw RocksDB, measured in the same run.
//!
//! Every figure is reported next to a baseline taken in the same process on
//! the same disk, and as a ratio to it: committed puts/s against plain
//! `WriteBatch`es, latest-get latency against `DB::get`, as-of reads on a key
//! with many versions against one with few, a key's history against a raw
//! iterator over as many adjacent keys, and a rewind on a large table against
//! the same rewind on a small one. Nothing here asserts a time; the ratios are
//! for a person (and `docs/benchmarks.md`) to judge.
//!
//! The raw database is opened with the options of `RocksEnv` that matter for
//! these workloads: same block cache size, write-buffer budget charged to that
//! cache, memtable size, lz4 (zstd at the bottom), bloom filter on point-lookup
//! data, index and filter blocks in the cache, WAL on, same batch size. It gets
//! its own cache of the same size so neither store warms the other's.
//!
//! Sizes come from defaults, then `--quick`, then `STRATA_BENCH_*` variables,
//! then command-line flags (`cargo bench --bench state -- --help`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rocksdb::{BlockBasedOptions, Cache, DB, DBCompressionType, Options, WriteBatch, WriteBufferManager, WriteOptions};
use strata_state::store::RocksStore;
use strata_state::store::rocks::{RocksConfig, RocksEnv};
use strata_state::{
    At, HistoryQuery, KeyRange, Partition, PartitionReader, TableConfig, TableName, TablePartition, Timestamp, Version,
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
            rewind_reps: 3,
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
const KNOBS: &[(&str, &str, &str)] = &[
    ("--keys", "STRATA_BENCH_KEYS", "distinct keys in the large table (1,000,000)"),
    ("--small-keys", "STRATA_BENCH_SMALL_KEYS", "keys in the small table of the rewind comparison (100,000)"),
    ("--batch", "STRATA_BENCH_BATCH", "puts per commit / WriteBatch (1,000)"),
    ("--value-bytes", "STRATA_BENCH_VALUE_BYTES", "value size (32)"),
    ("--gets", "STRATA_BENCH_GETS", "latest gets measured per store (200,000)"),
    ("--versions", "STRATA_BENCH_VERSIONS", "versions of the deep key (1,000)"),
    ("--few-versions", "STRATA_BENCH_FEW_VERSIONS", "versions of the shallow key (10)"),
    ("--as-of-reads", "STRATA_BENCH_AS_OF_READS", "as-of reads measured per key (50,000)"),
    ("--history-calls", "STRATA_BENCH_HISTORY_CALLS", "history calls measured (2,000)"),
    ("--changes", "STRATA_BENCH_CHANGES", "keys changed before each rewind (10,000)"),
    ("--rewind-reps", "STRATA_BENCH_REWIND_REPS", "rewinds per table (3)"),
    ("--seed", "STRATA_BENCH_SEED", "random seed (42)"),
    ("--dir", "STRATA_BENCH_DIR", "where the temporary databases go (the system temp dir)"),
];

fn set(s: &mut Sizes, flag: &str, raw: &str) -> Result<()> {
    let n = || raw.replace('_', "").parse::<usize>().with_context(|| format!("{flag}: {raw:?} is not a count"));
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

fn usage() -> String {
    let mut u = String::from("usage: cargo bench --bench state -- [--quick] [--FLAG N]...\n");
    for (flag, var, help) in KNOBS {
        u += &format!("  {flag:<16} {var:<28} {help}\n");
    }
    u
}

fn parse_sizes() -> Result<Sizes> {
    // cargo passes `--bench` to harness-less benches; it means nothing here.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        std::process::exit(0);
    }
    let quick = args.iter().any(|a| a == "--quick") || std::env::var("STRATA_BENCH_QUICK").is_ok_and(|v| v == "1");
    let mut s = if quick { Sizes::quick() } else { Sizes::full() };
    for (flag, var, _) in KNOBS {
        if let Ok(v) = std::env::var(var) {
            set(&mut s, flag, &v).with_context(|| format!("from {var}"))?;
        }
    }
    let mut it = args.iter().filter(|a| *a != "--quick");
    while let Some(a) = it.next() {
        let (flag, value) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => (a.clone(), it.next().with_context(|| format!("{a} needs a value\n{}", usage()))?.clone()),
        };
        set(&mut s, &flag, &value).with_context(usage)?;
    }
    if s.batch == 0 || s.keys == 0 || s.small_keys == 0 || s.changes == 0 || s.changes > s.small_keys {
        bail!("sizes must be positive and --changes at most --small-keys: {s:?}");
    }
    if s.few_versions == 0 || s.few_versions > s.versions || s.versions < 2 || s.value_bytes < 8 {
        bail!("need 1 <= --few-versions <= --versions, --versions >= 2 and --value-bytes >= 8: {s:?}");
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

impl RawDb {
    fn open(path: &Path, c: &RocksConfig) -> Result<RawDb> {
        let cache = Cache::new_lru_cache(c.block_cache_bytes);
        let wbm =
            WriteBufferManager::new_write_buffer_manager_with_cache(c.write_buffer_budget_bytes, false, cache.clone());
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_bloom_filter(10.0, false);
        let mut o = Options::default();
        o.create_if_missing(true);
        o.set_max_open_files(c.max_open_files);
        o.set_max_background_jobs(c.background_jobs);
        o.set_write_buffer_manager(&wbm);
        o.set_paranoid_checks(true);
        o.set_keep_log_file_num(2);
        o.set_block_based_table_factory(&table);
        o.set_write_buffer_size(c.write_buffer_bytes);
        o.set_compression_type(DBCompressionType::Lz4);
        o.set_bottommost_compression_type(DBCompressionType::Zstd);
        let db = DB::open(&o, path).context("open raw RocksDB")?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(!c.wal);
        Ok(RawDb { db, write_opts, _cache: cache })
    }

    /// Flushes memtables and waits for background compactions to finish, so
    /// the next measurement does not share the CPU with them.
    fn settle(&self) -> Result<Duration> {
        let t = Instant::now();
        self.db.flush()?;
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
    Ok(TablePartition::open(store, TableConfig::new(TableName::new("bench")?, Partition(0)))?)
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
    if v >= 10_000_000 {
        format!("{:.1} ms", v as f64 / 1e6)
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
    Row { what: what.into(), strata, baseline, ratio, aim }
}

fn verdict(ok: bool, aim: &str) -> String {
    format!("{aim}: {}", if ok { "met" } else { "MISSED" })
}

// ---------------------------------------------------------------- phases

/// Loads keys `0..n` in batches: versioned puts then one commit per batch.
fn load_table(t: &mut Table, s: &Sizes, n: usize, clock: &mut Clock, commits: &mut Histogram<u64>) -> Result<Duration> {
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
fn write_versions(t: &mut Table, s: &Sizes, clock: &mut Clock, deep: &[u8], shallow: &[u8]) -> Result<Version> {
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
    clock: &mut Clock,
    rng: &mut StdRng,
    round: u64,
) -> Result<(Duration, Duration)> {
    let target = t.latest_version();
    let picked = rand::seq::index::sample(rng, n, s.changes).into_vec();
    let mut v = Vec::new();
    for chunk in picked.chunks(s.batch) {
        for &i in chunk {
            value(i, round, s.value_bytes, &mut v);
            t.put(&key(i), &v, None);
        }
        t.commit(clock.tick(), &[])?;
    }
    t.flush()?;
    let a = Instant::now();
    let plan = t.rewind(At::Version(target), &KeyRange::all())?;
    let planned = a.elapsed();
    let b = Instant::now();
    t.commit(clock.tick(), &[])?;
    let committed = b.elapsed();
    if plan.changes.len() != s.changes {
        bail!("rewind planned {} changes, expected {}", plan.changes.len(), s.changes);
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

fn print_command() {
    let argv: Vec<String> = std::env::args().collect();
    let vars: Vec<String> =
        std::env::vars().filter(|(k, _)| k.starts_with("STRATA_BENCH_")).map(|(k, v)| format!("{k}={v}")).collect();
    let prefix: String = vars.iter().map(|v| format!("{v} ")).collect();
    let args: Vec<&str> = argv.iter().skip(1).map(String::as_str).filter(|a| *a != "--bench").collect();
    let tail = if args.is_empty() { String::new() } else { format!(" -- {}", args.join(" ")) };
    println!("command: {prefix}cargo bench --bench state{tail}");
    println!("binary:  {prefix}{}", argv.join(" "));
}

fn main() -> Result<()> {
    let s = parse_sizes()?;
    print_command();
    let config = RocksConfig::default();
    println!("sizes:   {s:?}");
    println!("rocks:   {config:?}");
    let mut rng = StdRng::seed_from_u64(s.seed);
    let root = tempfile::Builder::new().prefix("strata-bench-").tempdir_in(&s.dir).context("temp dir")?;
    println!("dir:     {}", root.path().display());

    let env = RocksEnv::new(config.clone())?;
    let raw = RawDb::open(&root.path().join("raw"), &config)?;
    let mut table = open_table(&env, &root.path().join("large"))?;
    let mut clock = Clock(0);
    let mut rows = Vec::new();

    // 1. Committed puts. The raw load runs first and is left to finish its
    // compactions, so the versioned load does not pay for them.
    println!("\n[1/5] loading {} keys in batches of {} ...", s.keys, s.batch);
    let (mut raw_batches, mut commits) = (histogram(), histogram());
    let raw_load = load_raw(&raw, &s, s.keys, &mut raw_batches)?;
    let raw_settle = raw.settle()?;
    let strata_load = load_table(&mut table, &s, s.keys, &mut clock, &mut commits)?;
    let t = Instant::now();
    table.flush()?;
    let strata_flush = t.elapsed();
    let (sr, rr) = (rate(s.keys, strata_load), rate(s.keys, raw_load));
    println!(
        "      raw {:.2} s (+{:.2} s flush and compactions), strata {:.2} s (+{:.2} s flush)",
        raw_load.as_secs_f64(),
        raw_settle.as_secs_f64(),
        strata_load.as_secs_f64(),
        strata_flush.as_secs_f64()
    );
    rows.push(row(
        &format!("committed puts/s ({} keys, batches of {})", s.keys, s.batch),
        thousands(sr),
        thousands(rr),
        format!("{:.0}% of raw", 100.0 * sr / rr),
        verdict(sr >= 0.5 * rr, ">= 50%"),
    ));
    rows.push(row(
        "  commit / WriteBatch latency p50",
        ns(p(&commits, 0.5)),
        ns(p(&raw_batches, 0.5)),
        format!("{:.2}x", p(&commits, 0.5) as f64 / p(&raw_batches, 0.5) as f64),
        String::new(),
    ));
    rows.push(row(
        "  commit / WriteBatch latency p99",
        ns(p(&commits, 0.99)),
        ns(p(&raw_batches, 0.99)),
        format!("{:.2}x", p(&commits, 0.99) as f64 / p(&raw_batches, 0.99) as f64),
        String::new(),
    ));

    // 2. Latest gets.
    println!("[2/5] {} latest gets per store ...", s.gets);
    let reader = table.reader();
    let (hs, hr) = latest_gets(&reader, &raw, &s, &mut rng)?;
    let get_ratio = p(&hs, 0.5) as f64 / p(&hr, 0.5) as f64;
    rows.push(row(
        &format!("latest get p50 ({} random keys)", s.gets),
        ns(p(&hs, 0.5)),
        ns(p(&hr, 0.5)),
        format!("{get_ratio:.2}x"),
        verdict(get_ratio <= 1.5, "<= 1.5x"),
    ));
    rows.push(row(
        "latest get p99",
        ns(p(&hs, 0.99)),
        ns(p(&hr, 0.99)),
        format!("{:.2}x", p(&hs, 0.99) as f64 / p(&hr, 0.99) as f64),
        String::new(),
    ));

    // 3 and 4. A deep and a shallow key, then as-of reads and history.
    println!(
        "[3/5] {} as-of reads on a key with {} versions and on one with {} ...",
        s.as_of_reads, s.versions, s.few_versions
    );
    let (deep, shallow) = (*b"deep-key-0000000", *b"shallow-key-0000");
    let first = write_versions(&mut table, &s, &mut clock, &deep, &shallow)?;
    let mut v = Vec::new();
    let mut wb = WriteBatch::default();
    for r in 0..s.versions {
        // Raw baseline for history: as many adjacent keys, one per version.
        let mut k = b"hist-".to_vec();
        k.extend_from_slice(&(r as u64).to_be_bytes());
        value(r, 7, s.value_bytes, &mut v);
        wb.put(&k, &v);
    }
    raw.db.write_opt(wb, &raw.write_opts)?;
    table.flush()?;
    raw.settle()?;
    let latest = table.latest_version();
    let (mut hd, mut hsh) = (histogram(), histogram());
    for n in 0..s.as_of_reads * 11 / 10 {
        let at = At::Version(Version(rng.random_range(first.0..latest.0)));
        let warm = n < s.as_of_reads / 10;
        let (a, b) = if warm {
            (reader.get_at(&deep, at)?, reader.get_at(&shallow, at)?)
        } else {
            (timed(&mut hd, || reader.get_at(&deep, at))?, timed(&mut hsh, || reader.get_at(&shallow, at))?)
        };
        if a.is_none() || b.is_none() {
            bail!("as-of read at {at:?} found nothing");
        }
    }
    let deep_ratio = p(&hd, 0.5) as f64 / p(&hsh, 0.5) as f64;
    rows.push(row(
        &format!("get_at(random version) p50, {} vs {} versions", s.versions, s.few_versions),
        ns(p(&hd, 0.5)),
        ns(p(&hsh, 0.5)),
        format!("{deep_ratio:.2}x"),
        verdict(deep_ratio <= 1.5, "flat (<= 1.5x)"),
    ));
    rows.push(row(
        "get_at p99",
        ns(p(&hd, 0.99)),
        ns(p(&hsh, 0.99)),
        format!("{:.2}x", p(&hd, 0.99) as f64 / p(&hsh, 0.99) as f64),
        String::new(),
    ));
    rows.push(row(
        "get_at p50 (deep key) vs raw latest get p50",
        ns(p(&hd, 0.5)),
        ns(p(&hr, 0.5)),
        format!("{:.2}x", p(&hd, 0.5) as f64 / p(&hr, 0.5) as f64),
        String::new(),
    ));

    println!("[4/5] {} history calls of {} versions ...", s.history_calls, s.versions);
    let q = HistoryQuery { limit: s.versions, ..HistoryQuery::default() };
    let (mut hh, mut hi) = (histogram(), histogram());
    for n in 0..s.history_calls * 11 / 10 {
        let warm = n < s.history_calls / 10;
        let got = if warm { reader.history(&deep, &q)? } else { timed(&mut hh, || reader.history(&deep, &q))? };
        if got.entries.len() != s.versions {
            bail!("history returned {} entries, expected {}", got.entries.len(), s.versions);
        }
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
        let got = if warm { scan()? } else { timed(&mut hi, scan)? };
        if got != s.versions {
            bail!("raw scan returned {got} entries, expected {}", s.versions);
        }
    }
    for (what, q) in [("history(1 key, all versions) p50", 0.5), ("history p99", 0.99)] {
        rows.push(row(
            &what.replace("all", &s.versions.to_string()),
            ns(p(&hh, q)),
            ns(p(&hi, q)),
            format!("{:.2}x", p(&hh, q) as f64 / p(&hi, q) as f64),
            String::new(),
        ));
    }
    rows.push(row(
        "  history per entry p50",
        ns(p(&hh, 0.5) / s.versions as u64),
        ns(p(&hi, 0.5) / s.versions as u64),
        String::new(),
        String::new(),
    ));

    // 5. Rewinds on the large table and on a small one.
    println!(
        "[5/5] rewinding {} changed keys on {} and {} keys, {} times each ...",
        s.changes, s.keys, s.small_keys, s.rewind_reps
    );
    let mut small = open_table(&env, &root.path().join("small"))?;
    let mut small_clock = Clock(0);
    load_table(&mut small, &s, s.small_keys, &mut small_clock, &mut histogram())?;
    small.flush()?;
    let (mut big_plan, mut big_commit, mut big_total) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sm_plan, mut sm_commit, mut sm_total) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..s.rewind_reps as u64 {
        let (a, b) = change_and_rewind(&mut table, &s, s.keys, &mut clock, &mut rng, 100 + r)?;
        big_plan.push(a);
        big_commit.push(b);
        big_total.push(a + b);
        let (a, b) = change_and_rewind(&mut small, &s, s.small_keys, &mut small_clock, &mut rng, 100 + r)?;
        sm_plan.push(a);
        sm_commit.push(b);
        sm_total.push(a + b);
    }
    let (bt, st) = (median(big_total), median(sm_total));
    let rewind_ratio = bt.as_secs_f64() / st.as_secs_f64();
    rows.push(row(
        &format!("rewind {} changes + commit, {} vs {} keys (median)", s.changes, s.keys, s.small_keys),
        ms(bt),
        ms(st),
        format!("{rewind_ratio:.2}x"),
        verdict(rewind_ratio <= 1.5, "near 1 (<= 1.5x)"),
    ));
    rows.push(row(
        "  of which plan + stage (median)",
        ms(median(big_plan)),
        ms(median(sm_plan)),
        String::new(),
        String::new(),
    ));
    rows.push(row(
        "  of which commit (median)",
        ms(median(big_commit)),
        ms(median(sm_commit)),
        String::new(),
        String::new(),
    ));
    rows.push(row(
        "  rewound keys/s (large table)",
        thousands(s.changes as f64 / bt.as_secs_f64()),
        String::new(),
        String::new(),
        String::new(),
    ));

    println!();
    println!("| measurement | strata | baseline | ratio | aim |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} |", r.what, r.strata, r.baseline, r.ratio, r.aim);
    }
    println!(
        "\nbaselines: rows 1-5 raw RocksDB; get_at: the key with {} versions; \
              history: raw iterator over {} adjacent keys; rewind: the {}-key table",
        s.few_versions, s.versions, s.small_keys
    );
    Ok(())
}
