//! The engine against a real Kafka-protocol broker (Tansu on loopback):
//! per-key aggregates over 100,000 records on 4 partitions checked against
//! an oracle; a second instance joining mid-stream and the first leaving
//! (separate processes); kill -9 and restart; poison records in the
//! dead-letter topic.
//!
//! Instances run as child processes: this test binary re-runs itself in
//! "child" mode (see `app_child`). The changelog is the source of truth
//! checked at the end: every table partition is rebuilt from it (a gap in
//! versions fails the rebuild) and compared with the oracle.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset as KOffset, TopicPartitionList};
use strata::serde::{Utf8, json};
use strata::{App, AppConfig, TableOptions, Topology};
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};
use strata_test_support::child::{ChildArgs, ChildProcess, child_command};
use strata_test_support::sums::{self, Agg, Event, KEYS, Sums, TABLE, check, oracle, poisoned};
use strata_testkit::Tansu;

const PARTITIONS: u32 = 4;
const SUMS: Sums = Sums {
    partitions: PARTITIONS,
};

fn topology() -> Topology {
    let t = Topology::new();
    sums::aggregate(&t);
    t
}

fn app_config(bootstrap: &str, app: &str, state: &Path) -> AppConfig {
    let mut c = AppConfig::new(app, bootstrap);
    c.state_dir = state.to_path_buf();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.commit_interval = Duration::from_millis(200);
    c
}

/// Child mode: runs one instance until its stop file appears.
#[test]
fn app_child() {
    let Some(args) = ChildArgs::enter() else {
        return;
    };
    let running = App::new(app_config(&args.bootstrap, &args.app, &args.state))
        .unwrap()
        .start(topology())
        .unwrap();
    println!("CHILD STARTED");
    args.run_until_stopped(
        running,
        Duration::from_millis(100),
        |running| {
            let mut owned: Vec<u32> = running
                .registry()
                .partitions()
                .iter()
                .map(|(_, p, _)| p.0)
                .collect();
            owned.dedup();
            let applied: u64 = running
                .registry()
                .task_stats()
                .values()
                .map(|s| s.records_in)
                .sum();
            println!("CHILD STATS owned={owned:?} records_in={applied}");
        },
        strata::RunningApp::shutdown,
    );
}

struct Instance {
    process: ChildProcess,
    log_path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    fn start(tansu: &Tansu, app: &str, state: &Path) -> Instance {
        let id = rand_suffix();
        let stop = state.join(format!("stop-{id}"));
        let log_path = state.join(format!("instance-{id}.log"));
        let stderr = std::fs::File::create(&log_path).unwrap();
        let args = ChildArgs {
            bootstrap: tansu.bootstrap(),
            app: app.into(),
            state: state.into(),
            stop,
        };
        let mut process = ChildProcess::spawn(
            "instance",
            child_command("app_child", &args).env("RUST_LOG", "info,librdkafka=warn"),
            args.stop,
            stderr,
        );
        let log = process.collect_stdout();
        Instance {
            process,
            log,
            log_path,
        }
    }

    fn owned(&self) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.starts_with("CHILD STATS"))
            .cloned()
    }

    /// Waits until the latest stats line satisfies `ok`; returns it.
    fn wait_owned(&self, ok: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let line = self.owned().unwrap_or_default();
            if ok(&line) {
                return line;
            }
            assert!(
                Instant::now() < end,
                "gave up waiting after {timeout:?}; last: {line}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(self) {
        self.process.stop();
    }

    fn kill9(mut self) {
        self.process.kill9();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Produces `n` events (round robin over keys), counting per-partition
/// records into `counts`.
fn produce(
    tansu: &Tansu,
    from: u64,
    n: u64,
    counts: &mut BTreeMap<u32, u64>,
    poison_every: Option<u64>,
) {
    produce_to(&tansu.bootstrap(), from, n, counts, poison_every)
}

fn produce_to(
    bootstrap: &str,
    from: u64,
    n: u64,
    counts: &mut BTreeMap<u32, u64>,
    poison_every: Option<u64>,
) {
    SUMS.produce(bootstrap, from, n, counts, |i| {
        poisoned(i, poison_every).then(|| b"{not an event".to_vec())
    })
}

fn setup(tansu: &Tansu) {
    tansu.create_topic("events", PARTITIONS).unwrap();
}

#[test]
fn sums_over_100k_records_match_the_oracle() {
    let tansu = Tansu::start().unwrap();
    setup(&tansu);
    let state = tempfile::tempdir().unwrap();
    let mut counts = BTreeMap::new();
    produce(&tansu, 0, 100_000, &mut counts, None);
    let app = App::new(app_config(&tansu.bootstrap(), "sums-100k", state.path()))
        .unwrap()
        .start(topology())
        .unwrap();
    app.wait_running(PARTITIONS as usize, Duration::from_secs(60))
        .unwrap();
    SUMS.wait_committed(
        &tansu.bootstrap(),
        "sums-100k",
        &counts,
        Duration::from_secs(240),
    );
    // The local tables agree with the oracle exactly (no crash: no re-application).
    let want = oracle(100_000, None);
    let mut local = BTreeMap::new();
    for k in want.keys() {
        let r = app.reader_for_key(TABLE, k.as_bytes()).unwrap();
        let v = r.get(&k.clone().to_key_bytes()).unwrap().unwrap();
        local.insert(
            k.clone(),
            ValueCodec::<Agg>::decode(&Bincode, &v.value).unwrap(),
        );
    }
    assert_eq!(check(&local, &want), 0);
    app.shutdown().unwrap();
    // So does the changelog, restored from scratch to its true end.
    assert_eq!(
        check(
            &SUMS.table_from_changelog(&tansu.bootstrap(), "sums-100k", |_| None),
            &want
        ),
        0
    );
}

#[test]
fn a_second_instance_joins_and_the_first_leaves() {
    let tansu = Tansu::start().unwrap();
    setup(&tansu);
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    eprintln!(
        "instance logs in {} and {}",
        s1.path().display(),
        s2.path().display()
    );
    let (s1, s2) = (s1.keep(), s2.keep());
    let (s1, s2) = (s1.as_path(), s2.as_path());
    let mut counts = BTreeMap::new();
    produce(&tansu, 0, 30_000, &mut counts, None);
    let a = Instance::start(&tansu, "two", s1);
    std::thread::sleep(Duration::from_secs(8));
    produce(&tansu, 30_000, 30_000, &mut counts, None);
    let b = Instance::start(&tansu, "two", s2);
    // Joining takes a few rebalance rounds (Tansu answers JoinGroup after
    // half the session timeout).
    let owned_b = b.wait_owned(
        |o| o.starts_with("CHILD STATS") && !o.contains("owned=[]"),
        Duration::from_secs(90),
    );
    let owned_a = a.owned().unwrap_or_default();
    produce(&tansu, 60_000, 20_000, &mut counts, None);
    a.stop();
    produce(&tansu, 80_000, 20_000, &mut counts, None);
    let owned_end = b.wait_owned(
        |o| o.contains("owned=[0, 1, 2, 3]"),
        Duration::from_secs(90),
    );
    SUMS.wait_committed(&tansu.bootstrap(), "two", &counts, Duration::from_secs(240));
    b.stop();
    println!("after the join: first {owned_a}; second {owned_b}; at the end: {owned_end}");
    assert!(
        !owned_a.contains("owned=[0, 1, 2, 3]"),
        "the first instance gave partitions up: {owned_a}"
    );
    let reapplied = check(
        &SUMS.table_from_changelog(&tansu.bootstrap(), "two", |_| None),
        &oracle(100_000, None),
    );
    println!("re-applied after graceful moves: {reapplied}");
    assert_eq!(
        reapplied, 0,
        "graceful handovers commit before releasing: nothing is applied twice"
    );
}

#[test]
fn kill_9_then_restart_loses_nothing() {
    let tansu = Tansu::start().unwrap();
    setup(&tansu);
    let state = tempfile::tempdir().unwrap();
    // Input keeps arriving while the instance runs, is killed, restarts.
    let bootstrap = tansu.bootstrap();
    let producer = std::thread::spawn(move || {
        let t = TansuRef(bootstrap);
        let mut counts = BTreeMap::new();
        for chunk in 0..20 {
            produce_to(&t.0, chunk * 5_000, 5_000, &mut counts, None);
            std::thread::sleep(Duration::from_millis(150));
        }
        counts
    });
    let a = Instance::start(&tansu, "crashy", state.path());
    a.wait_owned(
        |l| {
            l.split("records_in=")
                .nth(1)
                .and_then(|x| x.parse::<u64>().ok())
                .is_some_and(|n| n > 10_000)
        },
        Duration::from_secs(90),
    );
    a.kill9();
    // Restart on the same state directory: checkpoint + changelog tail.
    let b = Instance::start(&tansu, "crashy", state.path());
    let counts = producer.join().unwrap();
    SUMS.wait_committed(
        &tansu.bootstrap(),
        "crashy",
        &counts,
        Duration::from_secs(240),
    );
    let b_log = b.log_path.clone();
    b.stop();
    // The restart replayed only the changelog tail after each checkpoint.
    let log = std::fs::read_to_string(&b_log).unwrap();
    let froms: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("restoring from the changelog"))
        .filter_map(|l| l.split("from=").nth(1).and_then(|x| x.trim().parse().ok()))
        .collect();
    assert_eq!(
        froms.len(),
        PARTITIONS as usize,
        "one restore per partition: {froms:?}"
    );
    assert!(
        froms.iter().all(|f| *f > 0),
        "every partition resumed from its checkpoint, not from scratch: {froms:?}"
    );
    let reapplied = check(
        &SUMS.table_from_changelog(&tansu.bootstrap(), "crashy", |_| None),
        &oracle(100_000, None),
    );
    println!("records re-applied after kill -9 (at-least-once allows it): {reapplied}");
}

struct TansuRef(String);

#[test]
fn poison_records_go_to_the_dead_letter_topic() {
    let tansu = Tansu::start().unwrap();
    setup(&tansu);
    let state = tempfile::tempdir().unwrap();
    let mut counts = BTreeMap::new();
    produce(&tansu, 0, 10_000, &mut counts, Some(100));
    let app = App::new(app_config(&tansu.bootstrap(), "poison", state.path()))
        .unwrap()
        .start(topology())
        .unwrap();
    SUMS.wait_committed(
        &tansu.bootstrap(),
        "poison",
        &counts,
        Duration::from_secs(120),
    );
    app.shutdown().unwrap();
    assert_eq!(
        check(
            &SUMS.table_from_changelog(&tansu.bootstrap(), "poison", |_| None),
            &oracle(10_000, Some(100))
        ),
        0
    );
    // Read the dead-letter topic to its end.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", "dlq-reader")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("poison-dlq", p as i32, KOffset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut eofs, mut dead) = (0, Vec::new());
    let end = Instant::now() + Duration::from_secs(60);
    while eofs < PARTITIONS && Instant::now() < end {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let err = m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == "strata-error")
                        .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).to_string()))
                });
                dead.push((m.payload().map(|p| p.to_vec()), err));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eofs += 1,
            _ => {}
        }
    }
    assert_eq!(dead.len(), 100, "every poison record is dead-lettered");
    assert!(
        dead.iter()
            .all(|(p, e)| p.as_deref() == Some(&b"{not an event"[..])
                && e.as_deref().is_some_and(|e| e.contains("json decode")))
    );
}

#[test]
fn a_repartitioned_aggregate_matches_the_oracle() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let tansu = Tansu::start().unwrap();
    setup(&tansu);
    let state = tempfile::tempdir().unwrap();
    let mut counts = BTreeMap::new();
    produce(&tansu, 0, 20_000, &mut counts, None);
    let t = Topology::new();
    t.stream("events", Utf8, json::<Event>())
        .map(|k: String, e: Event| {
            (
                format!(
                    "g{}",
                    k.trim_start_matches('k').parse::<u64>().unwrap_or(0) % 10
                ),
                e,
            )
        })
        .repartition("groups", Utf8, json::<Event>())
        .aggregate(
            "group_sums",
            TableOptions::default(),
            |_g, e: Event, old: Option<(u64, i64)>| {
                let (n, s) = old.unwrap_or((0, 0));
                Some((n + 1, s + e.amount))
            },
        );
    let app = App::new(app_config(&tansu.bootstrap(), "regroup", state.path()))
        .unwrap()
        .start(t)
        .unwrap();
    let mut want: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for i in 0..20_000u64 {
        let e = want.entry(format!("g{}", (i % KEYS) % 10)).or_default();
        e.0 += 1;
        e.1 += (i % 97) as i64;
    }
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = BTreeMap::new();
        for g in want.keys() {
            if let Some(r) = app.reader_for_key("group_sums", g.as_bytes())
                && let Some(v) = r.get(&g.clone().to_key_bytes()).unwrap()
            {
                got.insert(
                    g.clone(),
                    ValueCodec::<(u64, i64)>::decode(&Bincode, &v.value).unwrap(),
                );
            }
        }
        if got == want {
            break;
        }
        assert!(
            Instant::now() < end,
            "repartitioned totals did not converge: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    app.shutdown().unwrap();
}
