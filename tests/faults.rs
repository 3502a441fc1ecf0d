//! The fault suite: three instances of an app as separate processes
//! against Tansu on loopback, a keyed input with a known oracle (per-key
//! count and sum, and a sequence number per key so lost and re-applied
//! records are both visible), faults injected while it runs, then checks:
//! every key equals the oracle (nothing lost), every version history is
//! strictly increasing and the changelog rebuilds every partition without
//! a gap, and the records applied more than once are counted (at-least-once
//! allows them). Apps named `eos-*` run exactly-once: there, nothing may be
//! applied twice, and the table's change stream (the output topic
//! `<app>-changes`, read as a `read_committed` consumer on Apache Kafka
//! would) must hold each key's changes once each, without a gap.
//!
//! Scenarios (each prints its figures):
//! - `kill_9_a_random_instance_repeatedly`: kill -9 of a random instance
//!   every 2-5 s, restarting it on its own state directory.
//! - `local_state_lost_or_corrupted_while_down`: an instance killed, its
//!   state directory deleted or a RocksDB file damaged, then restarted.
//! - `crashes_at_each_point_of_the_commit_protocol`: an instance aborts
//!   itself (failpoints, the `fail` crate) right after its changelog
//!   append, before its state write, or before its offset commit, and is
//!   restarted.
//! - `broker_paused_during_commits`: the broker frozen (SIGSTOP) for 10 s,
//!   several times, while the instances commit.
//! - `poison_records_land_in_the_dead_letter_topic_through_crashes`: 1% of
//!   the input undecodable while instances are killed: every one of them in
//!   the dead-letter topic, nothing else lost.
//! - `exactly_once_through_kill_9`, `exactly_once_crashes_at_each_point`:
//!   the same faults under exactly-once (crash points: after the changelog
//!   produce, with the offsets sent but before the commit, after the commit
//!   but before the state write).
//! - `exactly_once_fences_a_frozen_instance`: an instance frozen (SIGSTOP)
//!   past the session timeout while its partitions move to the others, then
//!   resumed: the zombie must commit nothing.
//!
//! CI runs reduced sizes. The full sizes (1,000,000 records, 20 kills):
//!
//! ```sh
//! STRATA_FAULTS_FULL=1 cargo test --test faults -- --nocapture --test-threads=1
//! ```
//!
//! docs/reliability.md lists the scenarios, the last full run's figures,
//! and what is not covered yet.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset as KOffset, TopicPartitionList};
use strata::kafka::client::RebalanceProtocol;
use strata::kafka::txn::{TXN_HEADER, TxnFilter, TxnId, TxnTag};
use strata::serde::{Utf8, json};
use strata::{App, AppConfig, Guarantee, Topology};
use strata_test_support::child::{ChildArgs, ChildProcess, child_command};
use strata_test_support::sums::{self, Agg, Sums, TABLE, check, oracle, poisoned};
use strata_testkit::Tansu;

const PARTITIONS: u32 = 6;
const SUMS: Sums = Sums {
    partitions: PARTITIONS,
};

fn full() -> bool {
    std::env::var("STRATA_FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// The output topic of the table's changes.
fn changes_topic(app: &str) -> String {
    format!("{app}-changes")
}

fn topology(app: &str) -> Topology {
    let t = Topology::new();
    sums::aggregate(&t)
        .changes()
        .to(&changes_topic(app), Utf8, json::<Option<Agg>>());
    t
}

/// Child mode: one instance, until killed or its stop file appears.
#[test]
fn fault_child() {
    let Some(args) = ChildArgs::enter() else {
        return;
    };
    let app = args.app.clone();
    let mut c = AppConfig::new(app.clone(), args.bootstrap.clone());
    if app.starts_with("eos-") {
        c.guarantee = Guarantee::ExactlyOnce;
    }
    c.state_dir = args.state.clone();
    c.kafka.session_timeout = Duration::from_secs(6);
    // Tansu does not run the second round of an incremental rebalance.
    c.kafka.rebalance = RebalanceProtocol::Eager;
    c.commit_interval = Duration::from_millis(200);
    if app == "eos-zombie" {
        // Work is pending whenever the instance is frozen, so on waking it
        // tries to commit it.
        c.commit_interval = Duration::from_secs(2);
    }
    // Crash points of the commit protocol, from the FAILPOINTS variable.
    let _failpoints = fail::FailScenario::setup();
    let running = App::new(c).unwrap().start(topology(&app)).unwrap();
    println!("CHILD STARTED");
    args.run_until_stopped(
        running,
        Duration::from_millis(100),
        |_| {},
        strata::RunningApp::shutdown,
    );
}

struct Instance {
    process: ChildProcess,
    state: PathBuf,
}

impl Instance {
    fn start(tansu: &Tansu, app: &str, state: &Path, logs: &Path, n: u32) -> Instance {
        Instance::start_with(tansu, app, state, logs, n, None)
    }

    /// Starts an instance, with failpoints configured (`FAILPOINTS`).
    fn start_with(
        tansu: &Tansu,
        app: &str,
        state: &Path,
        logs: &Path,
        n: u32,
        failpoints: Option<&str>,
    ) -> Instance {
        std::fs::create_dir_all(state).unwrap();
        let stop = state.with_extension("stop");
        let _ = std::fs::remove_file(&stop);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("instance-{n}.log")))
            .unwrap();
        let args = ChildArgs {
            bootstrap: tansu.bootstrap(),
            app: app.into(),
            state: state.into(),
            stop,
        };
        let mut process = ChildProcess::spawn(
            "instance",
            child_command("fault_child", &args)
                .env("RUST_LOG", "info,librdkafka=warn")
                .env("FAILPOINTS", failpoints.unwrap_or("")),
            args.stop,
            log,
        );
        process.wait_for("CHILD STARTED");
        Instance {
            process,
            state: state.to_path_buf(),
        }
    }

    /// Waits for the instance to end on its own (a failpoint aborting
    /// it); true if it did within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.process.wait_exit(timeout)
    }

    /// Freezes the process (SIGSTOP) for `d`, then resumes it.
    fn freeze_for(&self, d: Duration) {
        self.process.freeze_for(d)
    }

    fn kill9(&mut self) {
        self.process.kill9();
    }

    fn stop(self) {
        self.process.stop();
    }
}

/// Produces records `from..from + n` (round robin over keys), counting
/// records per partition, with one record in `poison_every` undecodable (its
/// value names its index, so the dead-letter topic can be checked).
fn produce_with(
    bootstrap: &str,
    from: u64,
    n: u64,
    counts: &mut BTreeMap<u32, u64>,
    poison_every: Option<u64>,
) {
    SUMS.produce(bootstrap, from, n, counts, |i| {
        poisoned(i, poison_every).then(|| format!("{{not an event #{i}").into_bytes())
    })
}

/// Each task's last committed transaction (exactly-once): the group's
/// committed offsets on `<app>-transactions`.
fn tips(tansu: &Tansu, app: &str) -> BTreeMap<u32, TxnId> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", app)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(&format!("{app}-transactions"), p as i32);
    }
    let Ok(c) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else {
        return BTreeMap::new();
    };
    c.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            KOffset::Offset(o) => TxnId::from_marker_offset(o).map(|t| (e.partition() as u32, t)),
            _ => None,
        })
        .collect()
}

/// Every record of partition `p` of `topic`, read to the fetch path's end
/// as a `read_committed` consumer: (transaction tag, key, value).
#[allow(clippy::type_complexity)]
fn read_tagged(tansu: &Tansu, topic: &str, p: u32) -> Vec<(Option<TxnTag>, Vec<u8>, Vec<u8>)> {
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", "faults-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p as i32, KOffset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < end, "{topic}[{p}] did not reach its end");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let tag = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == TXN_HEADER))
                    .map(|h| TxnTag::decode(h.value.unwrap_or_default()).unwrap());
                out.push((
                    tag,
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
}

/// Exactly-once: the table's change stream holds, per key, the changes
/// `applied = 1, 2, …, count` once each, in order: no gap, no duplicate.
/// Records of aborted transactions are skipped, as a `read_committed`
/// consumer on Apache Kafka would (Tansu delivers them): the transactions
/// that committed are those the task's changelog shows committed
/// (`TxnFilter` over it, resolved by the task's committed marker).
/// Returns (changes, aborted records skipped).
fn check_changes(tansu: &Tansu, app: &str, want: &BTreeMap<String, (u64, i64)>) -> (u64, u64) {
    let topic = changes_topic(app);
    let tips = tips(tansu, app);
    let (mut total, mut skipped) = (0, 0);
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        // Output partition p is written by task p only: keys partition
        // alike in the input and the output.
        let mut filter: TxnFilter<TxnId> = TxnFilter::new();
        let mut committed = Vec::new();
        for (tag, _, _) in read_tagged(tansu, &format!("{app}-{TABLE}-changelog"), p) {
            let id = match tag {
                Some(TxnTag::Data(id)) => Some(id),
                _ => None,
            };
            filter.push(id, tag, &mut committed);
        }
        filter.finish(tips.get(&p).copied(), &mut committed);
        let committed: std::collections::BTreeSet<TxnId> = committed.into_iter().collect();
        for (tag, key, value) in read_tagged(tansu, &topic, p) {
            let Some(TxnTag::Data(id)) = tag else {
                panic!("{topic}[{p}]: an output written outside a transaction");
            };
            if !committed.contains(&id) {
                skipped += 1;
                continue;
            }
            let agg: Option<Agg> = serde_json::from_slice(&value).unwrap();
            total += 1;
            seen.entry(String::from_utf8(key).unwrap())
                .or_default()
                .push(agg.map_or(0, |a| a.applied));
        }
    }
    for (k, (count, _)) in want {
        let got = seen.remove(k).unwrap_or_default();
        let expect: Vec<u64> = (1..=*count).collect();
        assert!(
            got == expect,
            "{k}: changes {}..{} ({} of them), expected 1..={count} once each",
            got.first().unwrap_or(&0),
            got.last().unwrap_or(&0),
            got.len()
        );
    }
    assert!(
        seen.is_empty(),
        "changes of unknown keys: {:?}",
        seen.keys()
    );
    (total, skipped)
}

/// Runs `n` records through three instances while `fault` is applied
/// `times` times (to a random instance, which it gets to restart), then
/// checks. Returns (records re-applied, seconds).
fn run(
    app: &str,
    n: u64,
    times: u32,
    poison_every: Option<u64>,
    fault: impl Fn(&Tansu, &mut Instance, &Path, u32, &str, u32),
) -> (u64, f64) {
    let started = Instant::now();
    let tansu = Tansu::start().unwrap();
    tansu.create_topic("events", PARTITIONS).unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    eprintln!("{app}: instance logs and state in {}", dir.display());
    let mut instances: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&tansu, app, &dir.join(format!("state-{i}")), &dir, i))
        .collect();
    let bootstrap = tansu.bootstrap();
    // The input keeps arriving while the faults happen: `n` records in 40
    // chunks spread over the time the faults are expected to take (about
    // 3.5 s each), then, if they take longer (a crash point waits for its
    // instance to reach it, which takes input), smaller chunks until they
    // are done. The oracle is computed over what was produced.
    let pause = Duration::from_millis((u64::from(times) * 3_500 / 40).max(250));
    let faults_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let faults_done = faults_done.clone();
        std::thread::spawn(move || {
            let mut counts = BTreeMap::new();
            let chunk = (n / 40).max(1);
            let mut from = 0;
            loop {
                let k = if from < n {
                    chunk.min(n - from)
                } else {
                    (n / 400).max(100)
                };
                produce_with(&bootstrap, from, k, &mut counts, poison_every);
                from += k;
                if from >= n && faults_done.load(std::sync::atomic::Ordering::Acquire) {
                    return (counts, from);
                }
                std::thread::sleep(pause);
            }
        })
    };
    let mut rng = rand::rng();
    for t in 0..times {
        std::thread::sleep(Duration::from_millis(rng.random_range(2_000..5_000)));
        let i = rng.random_range(0..instances.len());
        fault(&tansu, &mut instances[i], &dir, i as u32, app, t);
        println!("{app}: fault {} of {times} on instance {i}", t + 1);
    }
    faults_done.store(true, std::sync::atomic::Ordering::Release);
    let (counts, n) = producer.join().unwrap();
    println!("{app}: {n} records produced");
    SUMS.wait_committed(&tansu.bootstrap(), app, &counts, Duration::from_secs(600));
    for i in instances {
        i.stop();
    }
    let want = oracle(n, poison_every);
    // Every partition rebuilt from its changelog (a gap in versions fails
    // the rebuild, every history strictly increasing). Under exactly-once,
    // the records of aborted transactions are skipped (Tansu delivers
    // them): the task's committed marker resolves the last transactions.
    let table = SUMS.table_from_changelog(&tansu.bootstrap(), app, |p| {
        tips(&tansu, app).get(&p).copied()
    });
    let reapplied = check(&table, &want);
    if app.starts_with("eos-") {
        assert_eq!(
            reapplied, 0,
            "exactly-once: a record's effect applied twice"
        );
        let (changes, skipped) = check_changes(&tansu, app, &want);
        println!(
            "{app}: {changes} changes in {}, each once and in order; {skipped} records of aborted \
             transactions skipped (Tansu delivers them to read_committed consumers)",
            changes_topic(app)
        );
    }
    if poison_every.is_some() {
        let want: std::collections::BTreeSet<u64> =
            (0..n).filter(|i| poisoned(*i, poison_every)).collect();
        let got = dead_letters(&tansu, &format!("{app}-dlq"));
        assert_eq!(
            got, want,
            "every undecodable record, and nothing else, in the dead-letter topic"
        );
        println!(
            "{app}: {} undecodable records, all in the dead-letter topic",
            want.len()
        );
    }
    (reapplied, started.elapsed().as_secs_f64())
}

#[test]
fn kill_9_a_random_instance_repeatedly() {
    let (n, times) = if full() { (1_000_000, 20) } else { (60_000, 3) };
    let (reapplied, secs) = run("kill9", n, times, None, |tansu, inst, dir, i, app, _| {
        inst.kill9();
        *inst = Instance::start(tansu, app, &inst.state.clone(), dir, i);
    });
    println!(
        "kill -9 x{times} over {n} records on 3 instances: nothing lost; {reapplied} records re-applied \
         (at-least-once); {secs:.0} s"
    );
}

#[test]
fn local_state_lost_or_corrupted_while_down() {
    let (n, times) = if full() { (300_000, 6) } else { (40_000, 2) };
    let (reapplied, secs) = run(
        "lost-state",
        n,
        times,
        None,
        |tansu, inst, dir, i, app, t| {
            inst.kill9();
            let state = inst.state.clone();
            if t % 2 == 0 {
                // Gone entirely: rebuilt from the changelogs.
                std::fs::remove_dir_all(&state).unwrap();
            } else {
                // A damaged SST (or, before any flush, a damaged WAL): the
                // engine must refuse it, wipe it and rebuild.
                damage_one_file(&state);
            }
            *inst = Instance::start(tansu, app, &state, dir, i);
        },
    );
    println!(
        "state deleted or a RocksDB file damaged x{times} over {n} records: nothing lost; {reapplied} re-applied; \
         {secs:.0} s"
    );
}

/// Overwrites the middle of the largest `.sst` (or `.log`) file under
/// `dir` with garbage.
fn damage_one_file(dir: &Path) {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "sst" || x == "log") {
                files.push((e.metadata().map(|m| m.len()).unwrap_or(0), p));
            }
        }
    }
    files.sort();
    let Some((len, path)) = files.pop() else {
        return;
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = (len / 2) as usize;
    let end = (mid + 4096).min(bytes.len());
    for b in &mut bytes[mid..end] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
}

/// Restarts a random instance armed with one of `points` (in turn), which
/// aborts it at that point on its third commit reaching it, then restarts
/// it clean; `per_point` times each. Returns the figures line.
fn crash_points(app: &str, points: &[&str], n: u64, per_point: u32) -> String {
    let times = per_point * points.len() as u32;
    let crashed = std::sync::atomic::AtomicU32::new(0);
    let (reapplied, secs) = run(app, n, times, None, |tansu, inst, dir, i, app, t| {
        let point = points[t as usize % points.len()];
        inst.kill9();
        let armed = format!("{point}=2*off->return");
        *inst = Instance::start_with(tansu, app, &inst.state.clone(), dir, i, Some(&armed));
        if inst.wait_exit(Duration::from_secs(60)) {
            crashed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *inst = Instance::start(tansu, app, &inst.state.clone(), dir, i);
    });
    let crashed = crashed.into_inner();
    // An armed instance may own no partition for a while (a rebalance) and
    // reach no commit: most, not all, must have crashed.
    assert!(
        crashed * 2 >= times,
        "only {crashed} of {times} armed instances crashed at their point"
    );
    format!(
        "{crashed} of {times} armed instances crashed at their point, over {n} records: nothing lost; \
         {reapplied} re-applied; {secs:.0} s"
    )
}

#[test]
fn crashes_at_each_point_of_the_commit_protocol() {
    let (n, per_point) = if full() { (300_000, 10) } else { (60_000, 1) };
    let figures = crash_points(
        "crash-points",
        &[
            "commit-after-changelog",
            "commit-before-state",
            "commit-before-offsets",
        ],
        n,
        per_point,
    );
    println!("crashes at the commit protocol's points: {figures}");
}

#[test]
fn broker_paused_during_commits() {
    let (n, times) = if full() { (300_000, 4) } else { (40_000, 1) };
    let (reapplied, secs) = run(
        "broker-pause",
        n,
        times,
        None,
        |tansu, _inst, _dir, _i, _app, _t| {
            tansu.pause_for(Duration::from_secs(10)).unwrap();
        },
    );
    println!(
        "broker paused 10 s x{times} over {n} records: nothing lost; {reapplied} re-applied; {secs:.0} s"
    );
}

#[test]
fn poison_records_land_in_the_dead_letter_topic_through_crashes() {
    let (n, times) = if full() { (300_000, 6) } else { (40_000, 2) };
    let (reapplied, secs) = run(
        "poison",
        n,
        times,
        Some(100),
        |tansu, inst, dir, i, app, _| {
            inst.kill9();
            *inst = Instance::start(tansu, app, &inst.state.clone(), dir, i);
        },
    );
    println!(
        "1% undecodable over {n} records, kill -9 x{times}: nothing else lost; {reapplied} re-applied; {secs:.0} s"
    );
}

/// The indexes of the records in the dead-letter topic (every partition,
/// read to the fetch path's end; duplicates, which at-least-once allows,
/// collapse).
fn dead_letters(tansu: &Tansu, topic: &str) -> std::collections::BTreeSet<u64> {
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", "dlq-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts = md.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p as i32, KOffset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = std::collections::BTreeSet::new();
    let mut ended = std::collections::BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(60);
    while ended.len() < parts {
        assert!(
            Instant::now() < end,
            "the dead-letter topic did not reach its end"
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                let i = v
                    .rsplit('#')
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("a dead letter that is not one of ours: {v:?}"));
                out.insert(i);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    out
}

#[test]
fn exactly_once_through_kill_9() {
    let (n, times) = if full() { (1_000_000, 20) } else { (40_000, 3) };
    let (reapplied, secs) = run(
        "eos-kill9",
        n,
        times,
        None,
        |tansu, inst, dir, i, app, _| {
            inst.kill9();
            *inst = Instance::start(tansu, app, &inst.state.clone(), dir, i);
        },
    );
    println!(
        "exactly-once, kill -9 x{times} over {n} records on 3 instances: nothing lost, {reapplied} re-applied; \
         {secs:.0} s"
    );
}

#[test]
fn exactly_once_crashes_at_each_point() {
    let (n, per_point) = if full() { (300_000, 10) } else { (40_000, 1) };
    let figures = crash_points(
        "eos-crash-points",
        &[
            // The changelog records are in the open transaction.
            "commit-after-changelog",
            // Changelogs, outputs and offsets are in it; the commit is not
            // sent.
            "txn-before-commit",
            // The transaction committed; local state was not written.
            "commit-before-state",
        ],
        n,
        per_point,
    );
    println!("exactly-once, crashes at the commit's points: {figures}");
}

/// Whether the instance logging to `log` owns partitions now: a task
/// opened since its last revocation.
fn owns_partitions(log: &Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut owns = false;
    for line in text.lines() {
        if line.contains("partitions revoked") {
            owns = false;
        } else if line.contains("task opened for exactly-once") {
            owns = true;
        }
    }
    owns
}

#[test]
fn exactly_once_fences_a_frozen_instance() {
    let (n, times) = if full() { (300_000, 6) } else { (40_000, 2) };
    let logs = std::sync::Mutex::new(None);
    let (reapplied, secs) = run(
        "eos-zombie",
        n,
        times,
        None,
        |_tansu, inst, dir, i, _app, _| {
            // Only an owner can become a zombie: wait until this instance
            // owns partitions (a task opened since its last revocation).
            let log = dir.join(format!("instance-{i}.log"));
            let end = Instant::now() + Duration::from_secs(60);
            while !owns_partitions(&log) {
                assert!(Instant::now() < end, "instance {i} owned nothing for 60 s");
                std::thread::sleep(Duration::from_millis(200));
            }
            // Past the session timeout (6 s): the group moves its partitions
            // to the others, which fence its producers; when it wakes up, its
            // open transactions must fail and it must commit nothing more.
            inst.freeze_for(Duration::from_secs(15));
            *logs.lock().unwrap() = Some(dir.to_path_buf());
        },
    );
    // The zombies' attempts to commit, refused by the fencing.
    let dir = logs.into_inner().unwrap().unwrap();
    let fenced: usize = (0..3)
        .map(|i| {
            std::fs::read_to_string(dir.join(format!("instance-{i}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("runtime::worker") && l.contains("fenced"))
                .count()
        })
        .sum();
    assert!(
        fenced >= 1,
        "no frozen instance tried to commit on waking (see the logs in {})",
        dir.display()
    );
    println!(
        "exactly-once, an instance frozen 15 s x{times} over {n} records: {fenced} commits of woken zombies refused \
         (fenced); nothing lost, {reapplied} re-applied; {secs:.0} s"
    );
}
