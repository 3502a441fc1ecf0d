//! The engine against its ceilings, measured in the same run on the same
//! machine: a per-key running count and sum over small JSON records on a
//! Tansu broker on loopback.
//!
//! Phases, in order, all on one throwaway broker (`strata_testkit::Tansu`):
//!
//! 0. Produce the input: N records `{"amount":A}` keyed `k000042` (K keys,
//!    chosen by a fixed hash of the record index), to a 4-partition topic.
//! 1. Ceiling (a): a plain rdkafka `BaseConsumer` assigned all partitions
//!    from the beginning, `fetch.queue.backoff.ms=10`, reading to the fetch
//!    path's partition EOF on every partition (never the listed watermark,
//!    which Tansu reports wrongly).
//! 2. Ceiling (b): RocksDB read-modify-write of the same updates: get the
//!    key (a small overlay holds the unflushed batch's writes, so a key seen
//!    twice in one batch reads its own write), decode, add, put into a
//!    `WriteBatch` written every 1,000 records.
//! 3. The engine, twice: `Granularity::PerCommit`, then
//!    `Granularity::PerMutation`, each with its own application id (so its
//!    own consumer group, reading the input from the start) and state dir.
//!    Steady rate: from the first task commit seen in the registry to the
//!    group's committed offsets reaching the produced counts; end to end:
//!    from `App::start` to the same point (includes topic creation and the
//!    group join, about 3 s on Tansu). CPU per record from `/proc`, for this
//!    process (the engine runs in it) and for the broker, with a per-thread
//!    breakdown.
//!    Then both again under `Guarantee::ExactlyOnce` (one Kafka
//!    transaction per task commit), each with its own application id: the
//!    ratio exactly-once / at-least-once on the same workload and broker,
//!    and the commit latency distribution of each (`--eos 0` skips them).
//! 4. Restore, per variant: every table partition rebuilt from its
//!    changelog into a fresh RocksDB-backed `TablePartition`, timing the
//!    changelog reads separately from the whole; ceiling: blind puts of as
//!    many records into RocksDB in `WriteBatch`es of 10,000.
//!
//! Results are checked, not just timed: the raw consumer must see every
//! produced record, and sampled keys of the engine's tables and of the
//! restored tables must equal an in-memory oracle.
//!
//! Nothing asserts a time. Sizes: defaults, then `--quick`, then
//! `STRATA_BENCH_*` variables, then flags (`cargo bench --bench engine --
//! --help`).

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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset as KOffset, TopicPartitionList};
use rocksdb::{
    BlockBasedOptions, Cache, DB, DBCompressionType, Options, WriteBatch, WriteBufferManager,
    WriteOptions,
};
use serde::{Deserialize, Serialize};
use strata::kafka::changelog::KafkaChangelogReader;
use strata::kafka::client::KafkaConfig;
use strata::kafka::output::OutputProducer;
use strata::partitioner::partition_for;
use strata::serde::{Utf8, json};
use strata::{App, AppConfig, Guarantee, OutRecord, TableOptions, Topology};
use strata_state::changelog::ChangelogBatch;
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};
use strata_state::store::RocksEnv;
use strata_state::store::rocks::RocksConfig;
use strata_state::{
    ChangeRecord, ChangelogReader, Granularity, Lineage, Location, Offset, Partition, Retention,
    TableConfig, TableName, TablePartition, Timestamp, Version, VersionFlags,
};
use strata_testkit::Tansu;

const PARTITIONS: u32 = 4;
const INPUT: &str = "events";
const TABLE: &str = "counts";
/// Records per produce call while loading the input.
const PRODUCE_BATCH: usize = 50_000;
/// Records per `WriteBatch` in the read-modify-write ceiling.
const RMW_BATCH: usize = 1_000;
/// Puts per `WriteBatch` in the restore ceiling, and the default of
/// changelog records per restore batch (`AppConfig::restore_batch`'s).
const RESTORE_BATCH: usize = 10_000;
/// Keys of each table compared with the oracle.
const SAMPLED_KEYS: usize = 2_000;
/// How often the group's committed offsets are fetched while the engine runs.
const COMMITTED_POLL: Duration = Duration::from_millis(20);
/// Longest a phase may take before the run is abandoned.
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------- sizes

#[derive(Clone, Debug)]
struct Sizes {
    records: usize,
    keys: usize,
    workers: usize,
    /// The table's `TableOptions::cache_entries`.
    cache_entries: usize,
    /// The table's `TableOptions::max_staged`.
    max_staged: usize,
    /// RocksDB's write-ahead log for the engine's and the restored tables
    /// (`RocksConfig::wal`).
    wal: bool,
    /// Changelog records per restore batch in (d).
    restore_batch: usize,
    /// `AppConfig::commit_interval`, in milliseconds.
    commit_interval_ms: usize,
    /// Also run the engine under exactly-once.
    eos: bool,
    quick: bool,
}

/// (flag, environment variable, help).
const KNOBS: &[knobs::Knob] = &[
    (
        "--records",
        "STRATA_BENCH_RECORDS",
        "input records (1,000,000; --quick 100,000)",
    ),
    (
        "--keys",
        "STRATA_BENCH_KEYS",
        "distinct keys (100,000; --quick 10,000)",
    ),
    (
        "--workers",
        "STRATA_BENCH_WORKERS",
        "engine worker threads (2, the AppConfig default)",
    ),
    (
        "--cache-entries",
        "STRATA_BENCH_CACHE_ENTRIES",
        "the table's cache_entries (the TableOptions default)",
    ),
    (
        "--max-staged",
        "STRATA_BENCH_MAX_STAGED",
        "the table's max_staged (the TableOptions default)",
    ),
    (
        "--restore-batch",
        "STRATA_BENCH_RESTORE_BATCH",
        "changelog records per restore batch in (d) (10,000, the AppConfig default)",
    ),
    (
        "--commit-interval-ms",
        "STRATA_BENCH_COMMIT_INTERVAL_MS",
        "the app's commit_interval in ms (100, the AppConfig default)",
    ),
    (
        "--eos",
        "STRATA_BENCH_EOS",
        "1: also run the engine under exactly-once and compare (the default), 0: skip",
    ),
    (
        "--wal",
        "STRATA_BENCH_WAL",
        "1: RocksDB write-ahead log on (the default), 0: off",
    ),
];

fn set(s: &mut Sizes, flag: &str, raw: &str) -> Result<()> {
    let n = raw
        .replace('_', "")
        .parse::<usize>()
        .with_context(|| format!("{flag}: {raw:?} is not a count"))?;
    match flag {
        "--records" => s.records = n,
        "--keys" => s.keys = n,
        "--workers" => s.workers = n,
        "--cache-entries" => s.cache_entries = n,
        "--max-staged" => s.max_staged = n,
        "--wal" => s.wal = n != 0,
        "--restore-batch" => s.restore_batch = n,
        "--commit-interval-ms" => s.commit_interval_ms = n,
        "--eos" => s.eos = n != 0,
        _ => bail!("unknown option {flag}"),
    }
    Ok(())
}

fn parse_sizes() -> Result<Sizes> {
    let s = knobs::parse(
        "engine",
        KNOBS,
        |quick| {
            if quick {
                Sizes {
                    records: 100_000,
                    keys: 10_000,
                    workers: 2,
                    cache_entries: TableOptions::default().cache_entries,
                    max_staged: TableOptions::default().max_staged,
                    wal: RocksConfig::default().wal,
                    restore_batch: RESTORE_BATCH,
                    commit_interval_ms: AppConfig::new("x", "x").commit_interval.as_millis()
                        as usize,
                    eos: true,
                    quick,
                }
            } else {
                Sizes {
                    records: 1_000_000,
                    keys: 100_000,
                    workers: 2,
                    cache_entries: TableOptions::default().cache_entries,
                    max_staged: TableOptions::default().max_staged,
                    wal: RocksConfig::default().wal,
                    restore_batch: RESTORE_BATCH,
                    commit_interval_ms: AppConfig::new("x", "x").commit_interval.as_millis()
                        as usize,
                    eos: true,
                    quick,
                }
            }
        },
        set,
    )?;
    if s.records == 0
        || s.keys == 0
        || s.workers == 0
        || s.max_staged == 0
        || s.commit_interval_ms == 0
        || s.restore_batch == 0
        || s.keys > 1_000_000
    {
        bail!("need positive sizes and at most 1,000,000 keys: {s:?}");
    }
    Ok(s)
}

fn print_command() {
    let mut env: Vec<String> = KNOBS
        .iter()
        .filter_map(|(_, var, _)| std::env::var(var).ok().map(|v| format!("{var}={v}")))
        .collect();
    if let Ok(v) = std::env::var("STRATA_BENCH_QUICK") {
        env.push(format!("STRATA_BENCH_QUICK={v}"));
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut cmd = env.join(" ");
    if !cmd.is_empty() {
        cmd.push(' ');
    }
    cmd += "cargo bench --bench engine";
    if !args.is_empty() {
        cmd += &format!(" -- {}", args.join(" "));
    }
    println!("command: {cmd}");
}

// ---------------------------------------------------------------- data

/// An input record's value.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Event {
    amount: i64,
}

/// The aggregate: a running count and sum per key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Agg {
    count: u64,
    sum: i64,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key index and amount of record `i`: keys uniformly at random (a
/// fixed hash), amounts 0..1000.
fn record(i: usize, keys: usize) -> (usize, i64) {
    let h = mix(i as u64);
    ((h % keys as u64) as usize, ((h >> 32) % 1000) as i64)
}

fn key_name(k: usize) -> String {
    format!("k{k:06}")
}

/// The input, as produced: per-partition counts and the expected table.
struct Input {
    counts: BTreeMap<u32, u64>,
    oracle: Vec<Agg>,
}

fn produce_input(bootstrap: &str, s: &Sizes) -> Result<(Input, Duration)> {
    let producer = OutputProducer::new(&KafkaConfig::new(bootstrap), BTreeMap::new())?;
    let names: Vec<String> = (0..s.keys).map(key_name).collect();
    let parts: Vec<u32> = names
        .iter()
        .map(|n| partition_for(n.as_bytes(), PARTITIONS).0)
        .collect();
    let mut input = Input {
        counts: BTreeMap::new(),
        oracle: vec![Agg::default(); s.keys],
    };
    let topic: std::sync::Arc<str> = std::sync::Arc::from(INPUT);
    let mut batch = Vec::with_capacity(PRODUCE_BATCH);
    let started = Instant::now();
    for i in 0..s.records {
        let (k, amount) = record(i, s.keys);
        *input.counts.entry(parts[k]).or_default() += 1;
        let a = &mut input.oracle[k];
        a.count += 1;
        a.sum += amount;
        let value = serde_json::to_vec(&Event { amount })?;
        batch.push(OutRecord {
            topic: topic.clone(),
            key: Some(names[k].clone().into_bytes()),
            value: Some(value),
            headers: vec![],
        });
        if batch.len() == PRODUCE_BATCH {
            producer.produce(&batch)?;
            batch.clear();
        }
    }
    producer.produce(&batch)?;
    Ok((input, started.elapsed()))
}

// ---------------------------------------------------------------- CPU accounting

/// Clock ticks per second of `/proc` CPU times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (comm, ppid, utime + stime in ticks) from a `/proc/.../stat` line.
fn parse_stat(line: &str) -> Option<(String, u32, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line[open + 1..close].to_string();
    let rest: Vec<&str> = line[close + 2..].split_whitespace().collect();
    // Fields after the comm start at field 3 (state): ppid is 4, utime 14, stime 15.
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, ppid, utime + stime))
}

fn cpu_ticks(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|l| parse_stat(&l))
        .map_or(0, |(_, _, t)| t)
}

/// This process's CPU time, exited threads included.
fn self_cpu() -> u64 {
    cpu_ticks("/proc/self/stat")
}

/// Busy time of all CPUs of the machine (user, nice, system, irq, softirq,
/// steal), from `/proc/stat`.
fn machine_busy() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

/// Every process's CPU time, keyed by pid, with its name (kernel threads,
/// children of pid 2, in brackets).
fn all_procs() -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(line) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((comm, ppid, t)) = parse_stat(&line) {
            // A kworker's name changes with the work it runs.
            let comm = if comm.starts_with("kworker") {
                "kworker".to_string()
            } else {
                comm
            };
            let name = if ppid == 2 || pid == 2 {
                format!("[{comm}]")
            } else {
                comm
            };
            out.insert(pid, (name, t));
        }
    }
    out
}

/// The main thread's CPU time.
fn driver_cpu() -> u64 {
    cpu_ticks(&format!("/proc/self/task/{}/stat", std::process::id()))
}

/// Live threads of this process grouped by name with digits removed
/// (`strata-worker-0` and `strata-worker-1` are one group).
fn thread_cpu() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(line) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((comm, _, t)) = parse_stat(&line) {
            let group: String = comm
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
                .to_string();
            *out.entry(group).or_default() += t;
        }
    }
    out
}

/// The broker's pid: our child process named `tansu`.
fn broker_pid() -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let (comm, ppid, _) = parse_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?)?;
        (ppid == me && comm.starts_with("tansu")).then_some(pid)
    })
}

/// CPU seconds used in a phase by this process and by the broker.
#[derive(Clone, Debug, Default)]
struct Cpu {
    process: f64,
    /// Of `process`, the bench's main thread (in the engine phases it only
    /// watches the registry and the committed offsets).
    driver: f64,
    broker: f64,
    /// CPU seconds used by everything else on the machine (other processes
    /// contending for the same cores: a run with much of it is suspect).
    others: f64,
    /// The biggest other processes by CPU seconds in the phase (kernel
    /// threads, such as writeback of this process's files, in brackets).
    top_others: Vec<(String, f64)>,
    threads: Vec<(String, f64)>,
}

struct CpuMeter {
    tck: f64,
    broker: Option<u32>,
    self0: u64,
    driver0: u64,
    broker0: u64,
    machine0: u64,
    procs0: HashMap<u32, (String, u64)>,
    threads0: BTreeMap<String, u64>,
}

impl CpuMeter {
    fn start(tck: f64, broker: Option<u32>) -> CpuMeter {
        let broker0 = broker.map_or(0, |p| cpu_ticks(&format!("/proc/{p}/stat")));
        CpuMeter {
            tck,
            broker,
            self0: self_cpu(),
            driver0: driver_cpu(),
            broker0,
            machine0: machine_busy(),
            procs0: all_procs(),
            threads0: thread_cpu(),
        }
    }

    fn stop(&self) -> Cpu {
        let process = self_cpu().saturating_sub(self.self0) as f64 / self.tck;
        let driver = driver_cpu().saturating_sub(self.driver0) as f64 / self.tck;
        let broker = self.broker.map_or(0, |p| {
            cpu_ticks(&format!("/proc/{p}/stat")).saturating_sub(self.broker0)
        }) as f64
            / self.tck;
        let mut threads: Vec<(String, f64)> = thread_cpu()
            .into_iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.saturating_sub(self.threads0.get(&n).copied().unwrap_or(0)) as f64 / self.tck,
                )
            })
            .filter(|(_, s)| *s > 0.0)
            .collect();
        let live: f64 = threads.iter().map(|(_, s)| s).sum();
        if process - live > 0.005 {
            threads.push(("(threads that exited)".into(), process - live));
        }
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let machine = machine_busy().saturating_sub(self.machine0) as f64 / self.tck;
        let others = (machine - process - broker).max(0.0);
        let (me, broker_pid) = (std::process::id(), self.broker.unwrap_or(0));
        let mut by_comm: BTreeMap<String, u64> = BTreeMap::new();
        for (pid, (comm, t)) in all_procs() {
            if pid == me || pid == broker_pid {
                continue;
            }
            let before = self.procs0.get(&pid).map_or(0, |(_, t0)| *t0);
            if t > before {
                *by_comm.entry(comm).or_default() += t - before;
            }
        }
        let mut top_others: Vec<(String, f64)> = by_comm
            .into_iter()
            .map(|(c, t)| (c, t as f64 / self.tck))
            .collect();
        top_others.sort_by(|a, b| b.1.total_cmp(&a.1));
        top_others.truncate(4);
        Cpu {
            process,
            driver,
            broker,
            others,
            top_others,
            threads,
        }
    }
}

// ---------------------------------------------------------------- (a) raw consume

struct Measured {
    records: u64,
    /// The measured window: first to last record for the consumer, the
    /// whole loop for RocksDB.
    steady: Duration,
    /// From the start of the phase (client creation, assignment) to the end
    /// (for the consumer: to EOF on every partition).
    total: Duration,
    cpu: Cpu,
}

impl Measured {
    fn rate(&self) -> f64 {
        rate(self.records, self.steady)
    }
}

fn raw_consume(bootstrap: &str, input: &Input, meter: CpuMeter) -> Result<Measured> {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw-consume")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("creating the raw consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(INPUT, p as i32, KOffset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
    let mut eof = [false; PARTITIONS as usize];
    let (mut first, mut last) = (None, None);
    let mut bytes = 0usize;
    while !eof.iter().all(|e| *e) {
        if started.elapsed() > PHASE_TIMEOUT {
            bail!("raw consume: no EOF on every partition after {PHASE_TIMEOUT:?}; seen {seen:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                bytes += m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len);
                *seen.entry(m.partition() as u32).or_default() += 1;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => eof[p as usize] = true,
            Some(Err(e)) => bail!("raw consume: {e}"),
            None => {}
        }
    }
    let end = Instant::now();
    let cpu = meter.stop();
    if seen != input.counts {
        bail!(
            "raw consume saw {seen:?} at EOF, but {:?} were produced",
            input.counts
        );
    }
    std::hint::black_box(bytes);
    let (first, last) = first.zip(last).context("raw consume: no record")?;
    // The window ends at the last record, not at EOF: on Tansu the fetch that
    // reports EOF waits out `fetch.wait.max.ms` (500 ms), which is end
    // detection, not consuming.
    Ok(Measured {
        records: seen.values().sum(),
        steady: last - first,
        total: end - started,
        cpu,
    })
}

// ---------------------------------------------------------------- RocksDB ceilings

/// A plain one-family database with the options `RocksEnv` gives table
/// partitions (same cache and memtable sizes, write-buffer budget charged to
/// the cache, bloom filters, lz4 then zstd at the bottom, WAL as configured).
struct RawDb {
    db: DB,
    write_opts: WriteOptions,
    _cache: Cache,
}

impl RawDb {
    fn open(path: &Path, c: &RocksConfig) -> Result<RawDb> {
        let cache = Cache::new_lru_cache(c.block_cache_bytes);
        let wbm = WriteBufferManager::new_write_buffer_manager_with_cache(
            c.write_buffer_budget_bytes,
            false,
            cache.clone(),
        );
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
        o.set_keep_log_file_num(2);
        o.set_block_based_table_factory(&table);
        o.set_write_buffer_size(c.write_buffer_bytes);
        o.set_compression_type(DBCompressionType::Lz4);
        o.set_bottommost_compression_type(DBCompressionType::Zstd);
        let db = DB::open(&o, path).context("opening raw RocksDB")?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(!c.wal);
        Ok(RawDb {
            db,
            write_opts,
            _cache: cache,
        })
    }
}

/// Ceiling (b): get, decode, add, put of every update, in input order.
fn raw_rmw(dir: &Path, s: &Sizes, input: &Input, meter: CpuMeter) -> Result<Measured> {
    let raw = RawDb::open(&dir.join("rmw"), &RocksConfig::default())?;
    let names: Vec<Vec<u8>> = (0..s.keys).map(|k| key_name(k).into_bytes()).collect();
    let codec = Bincode;
    let mut pending: HashMap<usize, Agg> = HashMap::with_capacity(RMW_BATCH);
    let mut wb = WriteBatch::default();
    let started = Instant::now();
    for i in 0..s.records {
        let (k, amount) = record(i, s.keys);
        let mut a = match pending.get(&k) {
            Some(a) => *a,
            None => match raw.db.get(&names[k])? {
                Some(b) => ValueCodec::<Agg>::decode(&codec, &b)?,
                None => Agg::default(),
            },
        };
        a.count += 1;
        a.sum += amount;
        wb.put(&names[k], ValueCodec::<Agg>::encode(&codec, &a)?);
        pending.insert(k, a);
        if wb.len() == RMW_BATCH {
            raw.db.write_opt(std::mem::take(&mut wb), &raw.write_opts)?;
            pending.clear();
        }
    }
    raw.db.write_opt(wb, &raw.write_opts)?;
    let elapsed = started.elapsed();
    let cpu = meter.stop();
    for k in (0..s.keys).step_by((s.keys / SAMPLED_KEYS).max(1)) {
        let got = raw
            .db
            .get(&names[k])?
            .map(|b| ValueCodec::<Agg>::decode(&codec, &b))
            .transpose()?
            .unwrap_or_default();
        if got != input.oracle[k] {
            bail!(
                "raw RMW: key {k} holds {got:?}, expected {:?}",
                input.oracle[k]
            );
        }
    }
    Ok(Measured {
        records: s.records as u64,
        steady: elapsed,
        total: elapsed,
        cpu,
    })
}

/// Ceiling of (d): blind puts of `n` distinct keys (in random order) with
/// values of `value_bytes`, in `WriteBatch`es of `RESTORE_BATCH`. With
/// `sorted`, each batch's puts are sorted by key first (an experiment: how
/// much of a put is the memtable skip-list search that a random order
/// defeats).
fn blind_puts(
    dir: &Path,
    n: u64,
    value_bytes: usize,
    sorted: bool,
    meter: CpuMeter,
) -> Result<Measured> {
    let raw = RawDb::open(
        &dir.join(if sorted { "blind-sorted" } else { "blind" }),
        &RocksConfig::default(),
    )?;
    let mut batch: Vec<([u8; 16], Vec<u8>)> = Vec::with_capacity(RESTORE_BATCH);
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        batch.clear();
        for j in i..(i + RESTORE_BATCH as u64).min(n) {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&mix(j).to_be_bytes());
            key[8..].copy_from_slice(&j.to_be_bytes());
            let mut value = vec![0u8; value_bytes];
            let m = 8.min(value_bytes);
            value[..m].copy_from_slice(&mix(j ^ 0xABCD).to_le_bytes()[..m]);
            batch.push((key, value));
        }
        i += batch.len() as u64;
        if sorted {
            batch.sort_unstable_by_key(|a| a.0);
        }
        let mut wb = WriteBatch::default();
        for (k, v) in &batch {
            wb.put(k, v);
        }
        raw.db.write_opt(wb, &raw.write_opts)?;
    }
    let elapsed = started.elapsed();
    Ok(Measured {
        records: n,
        steady: elapsed,
        total: elapsed,
        cpu: meter.stop(),
    })
}

// ---------------------------------------------------------------- (c) the engine

fn topology(s: &Sizes, granularity: Granularity) -> Topology {
    let t = Topology::new();
    let options = TableOptions {
        retention: Retention::Unlimited,
        granularity,
        cache_entries: s.cache_entries,
        max_staged: s.max_staged,
    };
    t.stream(INPUT, Utf8, json::<Event>()).aggregate(
        TABLE,
        options,
        |_k, e: Event, old: Option<Agg>| {
            let mut a = old.unwrap_or_default();
            a.count += 1;
            a.sum += e.amount;
            Some(a)
        },
    );
    t
}

struct EngineRun {
    app: String,
    /// First task commit seen to all committed.
    steady: Duration,
    /// Records committed in that window.
    steady_records: u64,
    /// `App::start` to all committed.
    total: Duration,
    records_in: u64,
    changelog_records: u64,
    commits: u64,
    commit_us: Vec<u64>,
    cpu: Cpu,
}

/// The group's committed offset per partition of the input.
fn committed(consumer: &BaseConsumer) -> Option<BTreeMap<u32, u64>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(INPUT, p as i32);
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .ok()?;
    Some(
        c.elements()
            .iter()
            .map(|e| {
                (
                    e.partition() as u32,
                    match e.offset() {
                        KOffset::Offset(o) => o as u64,
                        _ => 0,
                    },
                )
            })
            .collect(),
    )
}

fn run_engine(
    tansu: &Tansu,
    s: &Sizes,
    input: &Input,
    granularity: Granularity,
    guarantee: Guarantee,
    state: &Path,
    meter: CpuMeter,
) -> Result<EngineRun> {
    let app = format!(
        "bench-{}{}",
        match granularity {
            Granularity::PerCommit => "per-commit",
            Granularity::PerMutation => "per-mutation",
        },
        match guarantee {
            Guarantee::AtLeastOnce => "",
            Guarantee::ExactlyOnce => "-eos",
        }
    );
    let mut config = AppConfig::new(app.clone(), tansu.bootstrap());
    config.guarantee = guarantee;
    config.state_dir = state.to_path_buf();
    config.kafka.session_timeout = Duration::from_secs(6);
    config.worker_threads = s.workers;
    config.commit_interval = Duration::from_millis(s.commit_interval_ms as u64);
    config.rocks.wal = s.wal;
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", &app)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the committed-offsets watcher")?;
    let started = Instant::now();
    let running = App::new(config)?.start(topology(s, granularity))?;
    let mut first: Option<(Instant, u64)> = None;
    let mut last_check = Instant::now() - COMMITTED_POLL;
    let mut last_seen = BTreeMap::new();
    let end = loop {
        if first.is_none() {
            let n: u64 = running
                .registry()
                .task_stats()
                .values()
                .map(|t| t.records_in)
                .sum();
            if n > 0 {
                first = Some((Instant::now(), n));
            }
        }
        if last_check.elapsed() >= COMMITTED_POLL {
            last_check = Instant::now();
            if let Some(c) = committed(&watcher) {
                if input.counts.iter().all(|(p, n)| c.get(p) == Some(n)) {
                    break Instant::now();
                }
                last_seen = c;
            }
        }
        if started.elapsed() > PHASE_TIMEOUT {
            bail!(
                "{app}: not all input committed after {PHASE_TIMEOUT:?}: committed {last_seen:?}, produced {:?}",
                input.counts
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let cpu = meter.stop();
    let (first_at, first_n) = first.context("all input committed but no task stats were seen")?;
    let stats = running.registry().task_stats();
    let commit_us = running.registry().commit_latencies_us();
    // The tables agree with the oracle. Under exactly-once a commit's
    // offsets become visible with its transaction, just before its tables
    // are written locally: the last commit may still be applying.
    let settle = Instant::now() + Duration::from_secs(10);
    for k in (0..s.keys).step_by((s.keys / SAMPLED_KEYS).max(1)) {
        let name = key_name(k);
        loop {
            let got = running
                .get(TABLE, name.as_bytes(), &name.to_key_bytes())?
                .map(|v| ValueCodec::<Agg>::decode(&Bincode, &v.value))
                .transpose()?
                .unwrap_or_default();
            if got == input.oracle[k] {
                break;
            }
            if guarantee == Guarantee::AtLeastOnce || Instant::now() > settle {
                bail!(
                    "{app}: key {name} holds {got:?}, expected {:?}",
                    input.oracle[k]
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    running.shutdown()?;
    Ok(EngineRun {
        app,
        steady: end - first_at,
        steady_records: s.records as u64 - first_n,
        total: end - started,
        records_in: stats.values().map(|t| t.records_in).sum(),
        changelog_records: stats.values().map(|t| t.changelog_records).sum(),
        commits: stats.values().map(|t| t.commits).sum(),
        commit_us,
        cpu,
    })
}

// ---------------------------------------------------------------- (d) restore

/// A changelog reader that adds up the time spent reading.
struct TimedReader<R> {
    inner: R,
    spent: Duration,
}

impl<R: ChangelogReader> ChangelogReader for TimedReader<R> {
    fn read(&mut self, from: Offset, max: usize) -> strata_state::Result<ChangelogBatch> {
        let t = Instant::now();
        let b = self.inner.read(from, max);
        self.spent += t.elapsed();
        b
    }
}

struct RestoreRun {
    records: u64,
    elapsed: Duration,
    /// Of which in changelog reads (fetch, decode).
    reading: Duration,
    cpu: Cpu,
}

fn restore(
    tansu: &Tansu,
    s: &Sizes,
    input: &Input,
    app: &str,
    dir: &Path,
    meter: CpuMeter,
) -> Result<RestoreRun> {
    let env = RocksEnv::new(RocksConfig {
        wal: s.wal,
        ..RocksConfig::default()
    })?;
    let name = TableName::new(TABLE)?;
    let topic = format!("{app}-{TABLE}-changelog");
    let (mut records, mut elapsed, mut reading) = (0, Duration::ZERO, Duration::ZERO);
    let mut tables = Vec::new();
    for p in 0..PARTITIONS {
        let t0 = Instant::now();
        let mut table = TablePartition::open_rocks(
            dir.join(p.to_string()),
            &env,
            TableConfig::new(name.clone(), Partition(p)),
        )?;
        let location = Location {
            table: name.clone(),
            partition: Partition(p),
        };
        let inner = KafkaChangelogReader::new(
            &KafkaConfig::new(tansu.bootstrap()),
            topic.clone(),
            location,
        )?;
        let mut reader = TimedReader {
            inner,
            spent: Duration::ZERO,
        };
        let progress = table.restore_from(&mut reader, s.restore_batch, &mut |_| {})?;
        elapsed += t0.elapsed();
        reading += reader.spent;
        records += progress.read;
        tables.push(table);
    }
    let cpu = meter.stop();
    for k in (0..s.keys).step_by((s.keys / SAMPLED_KEYS).max(1)) {
        let key = key_name(k);
        let p = partition_for(key.as_bytes(), PARTITIONS).0 as usize;
        let got = tables[p]
            .reader()
            .get(&key.to_key_bytes())?
            .map(|v| ValueCodec::<Agg>::decode(&Bincode, &v.value))
            .transpose()?
            .unwrap_or_default();
        if got != input.oracle[k] {
            bail!(
                "restore of {app}: key {key} holds {got:?}, expected {:?}",
                input.oracle[k]
            );
        }
    }
    Ok(RestoreRun {
        records,
        elapsed,
        reading,
        cpu,
    })
}

/// The payload size of a typical changelog record of this workload.
fn changelog_value_bytes() -> Result<usize> {
    let value = ValueCodec::<Agg>::encode(
        &Bincode,
        &Agg {
            count: 10,
            sum: 5_000,
        },
    )?;
    let r = ChangeRecord {
        key: key_name(42).to_key_bytes(),
        version: Version(123_456),
        time: Timestamp::now(),
        flags: VersionFlags::NONE,
        lineage: Some(Lineage {
            topic: INPUT.into(),
            partition: Partition(1),
            offset: Offset(123_456),
        }),
        value: Some(value),
    };
    Ok(r.encode_value().len())
}

// ---------------------------------------------------------------- report

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn thousands(x: f64) -> String {
    let s = format!("{x:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && c != '-' && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(a: f64, b: f64) -> String {
    format!("{:.0}%", 100.0 * a / b)
}

fn us_quantile(v: &[u64], q: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    format!("{:.1} ms", v[i] as f64 / 1e3)
}

fn cpu_line(c: &Cpu, per: u64) -> String {
    let top: Vec<String> = c
        .threads
        .iter()
        .take(8)
        .map(|(n, s)| format!("{n} {s:.2}"))
        .collect();
    format!(
        "process {:.2} s ({:.2} µs/rec; main thread {:.2} s), broker {:.2} s ({:.2} µs/rec), other processes {:.2} s ({}); threads: {}",
        c.process,
        1e6 * c.process / per as f64,
        c.driver,
        c.broker,
        1e6 * c.broker / per as f64,
        c.others,
        c.top_others
            .iter()
            .map(|(n, s)| format!("{n} {s:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        top.join(", ")
    )
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {model}")
}

fn main() -> Result<()> {
    let s = parse_sizes()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rdkafka::client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    print_command();
    println!("machine: {}", machine());
    println!(
        "sizes:   {} records, {} keys, {} partitions, {} worker threads, table cache {} entries, max staged {}, wal {}, restore batch {}, commit interval {} ms",
        s.records,
        s.keys,
        PARTITIONS,
        s.workers,
        s.cache_entries,
        s.max_staged,
        s.wal,
        s.restore_batch,
        s.commit_interval_ms
    );
    let tck = clock_ticks();
    let root = tempfile::Builder::new()
        .prefix("strata-bench-engine-")
        .tempdir()
        .context("temp dir")?;

    let tansu = Tansu::start()?;
    tansu.create_topic(INPUT, PARTITIONS)?;
    let broker = broker_pid();
    if broker.is_none() {
        println!("note: the broker's pid was not found; its CPU is not reported");
    }

    println!("\n[0/5] producing {} records ...", s.records);
    let (input, produced_in) = produce_input(&tansu.bootstrap(), &s)?;
    println!(
        "      {:.2} s ({} rec/s), per partition {:?}",
        produced_in.as_secs_f64(),
        thousands(rate(s.records as u64, produced_in)),
        input.counts
    );

    println!("[1/5] (a) raw consume with rdkafka BaseConsumer ...");
    let consume = raw_consume(&tansu.bootstrap(), &input, CpuMeter::start(tck, broker))?;
    println!(
        "      {} rec/s (first to last record {:.3} s; from client creation to EOF on all partitions {:.3} s = {} rec/s)",
        thousands(consume.rate()),
        consume.steady.as_secs_f64(),
        consume.total.as_secs_f64(),
        thousands(rate(consume.records, consume.total))
    );
    println!("      cpu: {}", cpu_line(&consume.cpu, consume.records));

    println!("[2/5] (b) raw RocksDB read-modify-write, WriteBatch of {RMW_BATCH} ...");
    let rmw = raw_rmw(root.path(), &s, &input, CpuMeter::start(tck, broker))?;
    println!(
        "      {} rec/s ({:.2} s)",
        thousands(rmw.rate()),
        rmw.steady.as_secs_f64()
    );
    println!("      cpu: {}", cpu_line(&rmw.cpu, rmw.records));

    let mut runs = Vec::new();
    for (i, g) in [Granularity::PerCommit, Granularity::PerMutation]
        .into_iter()
        .enumerate()
    {
        println!("[{}/5] (c) engine, {g:?} ...", 3 + i);
        let dir = root.path().join(format!("state-{i}"));
        let r = run_engine(
            &tansu,
            &s,
            &input,
            g,
            Guarantee::AtLeastOnce,
            &dir,
            CpuMeter::start(tck, broker),
        )?;
        println!(
            "      steady {} rec/s ({} records in {:.2} s), end to end {} rec/s ({:.2} s)",
            thousands(rate(r.steady_records, r.steady)),
            r.steady_records,
            r.steady.as_secs_f64(),
            thousands(rate(s.records as u64, r.total)),
            r.total.as_secs_f64()
        );
        println!(
            "      records_in {}, changelog records {} ({:.3}/input record), {} commits, commit latency p50 {} p99 {}",
            r.records_in,
            r.changelog_records,
            r.changelog_records as f64 / r.records_in.max(1) as f64,
            r.commits,
            us_quantile(&r.commit_us, 0.5),
            us_quantile(&r.commit_us, 0.99)
        );
        println!(
            "      cpu (start to all committed): {}",
            cpu_line(&r.cpu, s.records as u64)
        );
        runs.push((g, r));
    }

    let mut eos_runs = Vec::new();
    if s.eos {
        for (i, g) in [Granularity::PerCommit, Granularity::PerMutation]
            .into_iter()
            .enumerate()
        {
            println!("[{}/5] (e) engine, {g:?}, exactly-once ...", 3 + i);
            let dir = root.path().join(format!("state-eos-{i}"));
            let r = run_engine(
                &tansu,
                &s,
                &input,
                g,
                Guarantee::ExactlyOnce,
                &dir,
                CpuMeter::start(tck, broker),
            )?;
            println!(
                "      steady {} rec/s ({} records in {:.2} s), end to end {} rec/s ({:.2} s), {} commits",
                thousands(rate(r.steady_records, r.steady)),
                r.steady_records,
                r.steady.as_secs_f64(),
                thousands(rate(s.records as u64, r.total)),
                r.total.as_secs_f64(),
                r.commits
            );
            println!(
                "      cpu (start to all committed): {}",
                cpu_line(&r.cpu, s.records as u64)
            );
            eos_runs.push((g, r));
        }
    }

    println!("[5/5] (d) restore from the changelogs, and the blind WriteBatch ceiling ...");
    let mut restores = Vec::new();
    for (i, (g, r)) in runs.iter().enumerate() {
        let dir = root.path().join(format!("restore-{i}"));
        let rr = restore(
            &tansu,
            &s,
            &input,
            &r.app,
            &dir,
            CpuMeter::start(tck, broker),
        )?;
        if rr.records != r.changelog_records {
            println!(
                "      note: {} changelog records read, {} written",
                rr.records, r.changelog_records
            );
        }
        println!(
            "      {g:?}: {} records in {:.2} s = {} rec/s (reads {:.2} s = {} rec/s alone)",
            rr.records,
            rr.elapsed.as_secs_f64(),
            thousands(rate(rr.records, rr.elapsed)),
            rr.reading.as_secs_f64(),
            thousands(rate(rr.records, rr.reading))
        );
        println!("      cpu: {}", cpu_line(&rr.cpu, rr.records));
        restores.push(rr);
    }
    let blind_n = restores.iter().map(|r| r.records).max().unwrap_or(0).max(1);
    let value_bytes = changelog_value_bytes()?;
    let blind = blind_puts(
        root.path(),
        blind_n,
        value_bytes,
        false,
        CpuMeter::start(tck, broker),
    )?;
    println!(
        "      blind puts: {} records of {value_bytes} bytes = {} rec/s",
        blind_n,
        thousands(blind.rate())
    );
    println!("      cpu: {}", cpu_line(&blind.cpu, blind.records));
    let sorted = blind_puts(
        root.path(),
        blind_n,
        value_bytes,
        true,
        CpuMeter::start(tck, broker),
    )?;
    println!(
        "      experiment, the same puts sorted by key within each batch: {} rec/s ({:.2}x)",
        thousands(sorted.rate()),
        sorted.rate() / blind.rate()
    );

    // The table.
    let (a, b, w) = (consume.rate(), rmw.rate(), blind.rate());
    println!("\n| measurement | records/s | ceiling (same run) | ratio | aim | met |");
    println!("|---|---:|---|---:|---|---|");
    println!(
        "| (a) rdkafka BaseConsumer, raw consume | {} | (issue: ~2.3M) | | | |",
        thousands(a)
    );
    println!(
        "| (b) RocksDB read-modify-write, WriteBatch of {RMW_BATCH} | {} | (issue: ~400k) | | | |",
        thousands(b)
    );
    for (g, r) in &runs {
        let steady = rate(r.steady_records, r.steady);
        let (aim, goal) = match g {
            Granularity::PerCommit => (">= 660k", 660_000.0),
            Granularity::PerMutation => (">= 260k", 260_000.0),
        };
        println!(
            "| (c) engine {g:?}, steady | {} | (a) {} / (b) {} | {} / {} | {aim} | {} |",
            thousands(steady),
            thousands(a),
            thousands(b),
            pct(steady, a),
            pct(steady, b),
            if steady >= goal { "yes" } else { "no" }
        );
        let e2e = rate(s.records as u64, r.total);
        println!(
            "| (c) engine {g:?}, end to end ({:.1} s) | {} | (a) {} / (b) {} | {} / {} | | |",
            r.total.as_secs_f64(),
            thousands(e2e),
            thousands(a),
            thousands(b),
            pct(e2e, a),
            pct(e2e, b)
        );
    }
    for ((g, _), rr) in runs.iter().zip(&restores) {
        let x = rate(rr.records, rr.elapsed);
        println!(
            "| (d) restore {g:?} changelog ({} records) | {} | blind WriteBatch {} | {} | >= 560k | {} |",
            rr.records,
            thousands(x),
            thousands(w),
            pct(x, w),
            if x >= 560_000.0 { "yes" } else { "no" }
        );
    }
    println!(
        "| (d) ceiling: RocksDB blind puts, {value_bytes}-byte values, WriteBatch of {RESTORE_BATCH} | {} | (issue: ~700k) | | | |",
        thousands(w)
    );

    println!(
        "\n| CPU per record (µs) | this process | broker | changelog rec / input rec | other processes (CPU-s in the phase) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let per = |c: &Cpu, n: u64| (1e6 * c.process / n as f64, 1e6 * c.broker / n as f64);
    let (p, q) = per(&consume.cpu, consume.records);
    println!(
        "| (a) raw consume | {p:.2} | {q:.2} | | {:.2} |",
        consume.cpu.others
    );
    let (p, _) = per(&rmw.cpu, rmw.records);
    println!("| (b) RocksDB RMW | {p:.2} | | | {:.2} |", rmw.cpu.others);
    for (g, r) in &runs {
        let (_, q) = per(&r.cpu, s.records as u64);
        let p = 1e6 * (r.cpu.process - r.cpu.driver) / s.records as f64;
        println!(
            "| (c) engine {g:?} (start to all committed, bench main thread excluded) | {p:.2} | {q:.2} | {:.3} | {:.2} |",
            r.changelog_records as f64 / r.records_in.max(1) as f64,
            r.cpu.others
        );
    }
    for ((g, _), rr) in runs.iter().zip(&restores) {
        let (p, q) = per(&rr.cpu, rr.records);
        println!(
            "| (d) restore {g:?} (per changelog record) | {p:.2} | {q:.2} | | {:.2} |",
            rr.cpu.others
        );
    }
    let (p, _) = per(&blind.cpu, blind.records);
    println!(
        "| (d) blind WriteBatch | {p:.2} | | | {:.2} |",
        blind.cpu.others
    );
    if !eos_runs.is_empty() {
        println!(
            "\n| guarantee | granularity | steady records/s | end to end records/s | ratio to at-least-once (steady) | commits | commit latency p50 / p90 / p99 / max (ms) |"
        );
        println!("|---|---|---:|---:|---:|---:|---|");
        let ms = |v: &[u64], q: f64| -> String {
            if v.is_empty() {
                return "-".into();
            }
            let mut v = v.to_vec();
            v.sort_unstable();
            format!(
                "{:.1}",
                v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0
            )
        };
        for (g, alo) in &runs {
            let base = rate(alo.steady_records, alo.steady);
            let eos = eos_runs.iter().find(|(h, _)| h == g).map(|(_, r)| r);
            for (name, r) in [("at-least-once", Some(alo)), ("exactly-once", eos)] {
                let Some(r) = r else { continue };
                let steady = rate(r.steady_records, r.steady);
                println!(
                    "| {name} | {g:?} | {} | {} | {} | {} | {} / {} / {} / {} |",
                    thousands(steady),
                    thousands(rate(s.records as u64, r.total)),
                    pct(steady, base),
                    r.commits,
                    ms(&r.commit_us, 0.5),
                    ms(&r.commit_us, 0.9),
                    ms(&r.commit_us, 0.99),
                    ms(&r.commit_us, 1.0)
                );
            }
        }
    }
    if s.quick {
        println!("\n(--quick: sizes too small for the numbers to mean much)");
    }
    Ok(())
}
