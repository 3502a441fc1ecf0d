//! Keys read back whatever partitioner their producer used (Tansu on
//! loopback, three instances in this process, each serving gRPC).
//!
//! Four input topics of 4 partitions, each feeding a per-key sum:
//! - `in-crc`: produced with librdkafka's default partitioner
//!   (`consistent_random`, CRC32), declared as nothing (so murmur2): the
//!   data contradicts the declaration;
//! - `in-crc-ok`: produced the same way, declared `Partitioner::Crc32`;
//! - `in-murmur`: produced with `murmur2_random`, undeclared (murmur2);
//! - `in-explicit`: an explicit partition per record that no hash gives,
//!   declared `Partitioner::Unknown`.
//!
//! Asserted, from every instance: every key's Get and History through gRPC
//! equal the oracle computed from the input (never a false "absent"); a
//! single-key Scan finds the key; the in-process `RunningApp::get` finds
//! the key or says it cannot vouch, never `None`. The mismatch metric and
//! the warning fire for `in-crc` only, naming CRC32 as the fit; the
//! declared-and-right topics are read without asking every partition.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use strata::partitioner::Partitioner;
use strata::serde::{Utf8, json};
use strata::{App, AppConfig, RunningApp, TableOptions, Topology};
use strata_proto::v1 as pb;
use strata_proto::v1::query_client::QueryClient;
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};
use strata_testkit::Tansu;
use tonic::transport::Channel;

const PARTITIONS: u32 = 4;
const KEYS: usize = 120;
const ROUNDS: i64 = 3;
const TOPICS: [(&str, &str); 4] = [
    ("in-crc", "crc_sums"),
    ("in-crc-ok", "crc_ok_sums"),
    ("in-murmur", "murmur_sums"),
    ("in-explicit", "explicit_sums"),
];

/// Everything the engine logs, for the warning's check.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn key(i: usize) -> String {
    format!("user-{i:03}")
}

/// The value of record `round` of key `i`.
fn value(i: usize, round: i64) -> i64 {
    round * 1000 + i as i64 + 1
}

/// A key's sums after each of its records, newest first (its History).
fn oracle_history(i: usize) -> Vec<i64> {
    let mut sums: Vec<i64> = (0..ROUNDS)
        .scan(0, |s, r| {
            *s += value(i, r);
            Some(*s)
        })
        .collect();
    sums.reverse();
    sums
}

/// The partition of `in-explicit` key `i`: its producer's own choice.
fn explicit_partition(i: usize) -> i32 {
    ((i * 3 + 1) % PARTITIONS as usize) as i32
}

fn topology() -> Topology {
    let t = Topology::new();
    for (topic, table) in TOPICS {
        t.stream(topic, Utf8, json::<i64>()).aggregate(
            table,
            TableOptions::default(),
            |_k, v: i64, old: Option<i64>| Some(old.unwrap_or(0) + v),
        );
    }
    t
}

fn config(bootstrap: &str, state: &Path) -> AppConfig {
    let mut c = AppConfig::new("partitioners", bootstrap);
    c.state_dir = state.to_path_buf();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.commit_interval = Duration::from_millis(100);
    c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    c.partitioners
        .insert("in-crc-ok".into(), Partitioner::Crc32);
    c.partitioners
        .insert("in-explicit".into(), Partitioner::Unknown);
    c
}

/// Produces every topic's records, each topic the way its producers do.
fn produce(bootstrap: &str) {
    let producer = |partitioner: Option<&str>| -> BaseProducer {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap).set("linger.ms", "5");
        if let Some(p) = partitioner {
            c.set("partitioner", p);
        }
        c.create().unwrap()
    };
    // rdkafka's default: librdkafka's consistent_random.
    let default = producer(None);
    let murmur = producer(Some("murmur2_random"));
    for round in 0..ROUNDS {
        for i in 0..KEYS {
            let (k, v) = (key(i), value(i, round).to_string());
            for topic in ["in-crc", "in-crc-ok"] {
                send(&default, BaseRecord::to(topic).key(&k).payload(&v));
            }
            send(&murmur, BaseRecord::to("in-murmur").key(&k).payload(&v));
            send(
                &default,
                BaseRecord::to("in-explicit")
                    .key(&k)
                    .payload(&v)
                    .partition(explicit_partition(i)),
            );
        }
        // Records of one key stay in order: each round is delivered
        // before the next is sent.
        for p in [&default, &murmur] {
            p.flush(Duration::from_secs(30)).unwrap();
        }
    }
}

fn send<'a>(p: &BaseProducer, mut r: BaseRecord<'a, String, String>) {
    loop {
        match p.send(r) {
            Ok(()) => return,
            Err((e, back)) => {
                assert!(
                    matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "{e}"
                );
                p.poll(Duration::from_millis(10));
                r = back;
            }
        }
    }
}

async fn client(addr: SocketAddr) -> QueryClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    QueryClient::new(ch)
}

fn get(table: &str, k: &str) -> pb::GetRequest {
    pb::GetRequest {
        table: table.into(),
        key_ref: Some(pb::get_request::KeyRef::KeyJson(format!("{k:?}"))),
        ..Default::default()
    }
}

/// The key's value as Get answers it through `q`: `None` for absent.
async fn get_value(q: &mut QueryClient<Channel>, table: &str, k: &str) -> Option<i64> {
    let r = q.get(get(table, k)).await.unwrap().into_inner();
    match r.outcome.unwrap() {
        pb::get_response::Outcome::Found(e) => Some(e.value_json.parse().unwrap()),
        pb::get_response::Outcome::Absent(_) => None,
    }
}

async fn history(q: &mut QueryClient<Channel>, table: &str, k: &str) -> Vec<i64> {
    let r = q
        .history(pb::HistoryRequest {
            table: table.into(),
            key_ref: Some(pb::history_request::KeyRef::KeyJson(format!("{k:?}"))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.entries
        .iter()
        .map(|e| e.value_json.parse().unwrap())
        .collect()
}

/// Waits until the three instances own every partition between them and
/// each one's directory names an owner for every partition.
fn wait_assigned(apps: &[RunningApp]) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let mut owned: Vec<u32> = apps
            .iter()
            .flat_map(|a| {
                a.registry()
                    .partitions()
                    .into_iter()
                    .filter(|(t, _, s)| t == "crc_sums" && *s == strata::PartitionState::Running)
                    .map(|(_, p, _)| p.0)
            })
            .collect();
        owned.sort_unstable();
        let known = apps.iter().all(|a| {
            (0..PARTITIONS).all(|p| a.directory().owner(strata_state::Partition(p)).is_some())
        });
        let each = apps.iter().all(|a| {
            a.registry()
                .partitions()
                .iter()
                .any(|(t, _, _)| t == "crc_sums")
        });
        if owned == (0..PARTITIONS).collect::<Vec<_>>() && known && each {
            return;
        }
        assert!(
            Instant::now() < end,
            "partitions not assigned across the three instances: {owned:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keys_read_back_whatever_their_producer_partitioner() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,librdkafka=warn")
        .with_writer(|| Capture)
        .with_ansi(false)
        .try_init();
    let tansu = Tansu::start().unwrap();
    for (topic, _) in TOPICS {
        tansu.create_topic(topic, PARTITIONS).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut apps = Vec::new();
    for n in 0..3 {
        let state = dir.path().join(format!("i{n}"));
        apps.push(
            App::new(config(&tansu.bootstrap(), &state))
                .unwrap()
                .start(topology())
                .unwrap(),
        );
    }
    wait_assigned(&apps);
    produce(&tansu.bootstrap());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addrs: Vec<SocketAddr> = apps.iter().map(|a| a.grpc_addr().unwrap()).collect();
    rt.block_on(async {
        // Processed: the last key's last sum is readable everywhere.
        let end = Instant::now() + Duration::from_secs(120);
        let mut q = client(addrs[0]).await;
        'wait: loop {
            let mut done = true;
            for (_, table) in TOPICS {
                for i in [0, KEYS / 2, KEYS - 1] {
                    // While waiting, a partition still restoring (a late
                    // rebalance) answers UNAVAILABLE: not done yet.
                    match q.get(get(table, &key(i))).await {
                        Ok(r) => match r.into_inner().outcome.unwrap() {
                            pb::get_response::Outcome::Found(e)
                                if e.value_json.parse::<i64>().unwrap() == oracle_history(i)[0] => {
                            }
                            _ => done = false,
                        },
                        Err(s) if s.code() == tonic::Code::Unavailable => done = false,
                        Err(s) => panic!("{s:?}"),
                    }
                }
            }
            if done {
                break 'wait;
            }
            assert!(Instant::now() < end, "input not processed in time");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        for (n, addr) in addrs.iter().enumerate() {
            let mut q = client(*addr).await;
            for (topic, table) in TOPICS {
                let before = apps[n].registry().key_scatters();
                for i in 0..KEYS {
                    let k = key(i);
                    assert_eq!(
                        get_value(&mut q, table, &k).await,
                        Some(oracle_history(i)[0]),
                        "instance {n}: Get {table} {k}"
                    );
                    assert_eq!(
                        history(&mut q, table, &k).await,
                        oracle_history(i),
                        "instance {n}: History {table} {k}"
                    );
                }
                let scattered = apps[n].registry().key_scatters() - before;
                if matches!(topic, "in-murmur" | "in-crc-ok") {
                    // Declared and right: each read went to the key's
                    // partition only (no miss to confirm).
                    assert_eq!(scattered, 0, "instance {n}: {table} reads were scattered");
                } else {
                    // Contradicted or unknown: every read asked every
                    // partition.
                    assert_eq!(
                        scattered,
                        2 * KEYS as u64,
                        "instance {n}: {table} reads were routed by a hash it cannot trust"
                    );
                }
                // A key that was never produced is absent, after every
                // partition was asked.
                assert_eq!(get_value(&mut q, table, "nobody").await, None);
                // A single-key Scan finds the key where it lives.
                let k = key(7);
                let page = q
                    .scan(pb::ScanRequest {
                        table: table.into(),
                        keys: Some(pb::KeyFilter {
                            filter: Some(pb::key_filter::Filter::KeyJson(format!("{k:?}"))),
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let found: Vec<i64> = page
                    .items
                    .iter()
                    .map(|i| i.entry.as_ref().unwrap().value_json.parse().unwrap())
                    .collect();
                assert_eq!(
                    found,
                    vec![oracle_history(7)[0]],
                    "instance {n}: Scan {table} {k}"
                );
            }
        }
    });
    // The clients' connections live on this runtime: close them, so the
    // servers stop without waiting for them.
    drop(rt);

    // In-process reads: found, or an error saying the key's partition is
    // elsewhere; never a false None.
    for (n, app) in apps.iter().enumerate() {
        let mut found = 0;
        for (_, table) in TOPICS {
            for i in 0..KEYS {
                let k = key(i);
                match app.get(table, k.as_bytes(), &k.to_key_bytes()) {
                    Ok(Some(v)) => {
                        let sum: i64 = ValueCodec::decode(&Bincode, &v.value).unwrap();
                        assert_eq!(sum, oracle_history(i)[0], "instance {n}: get {table} {k}");
                        found += 1;
                    }
                    Ok(None) => panic!("instance {n}: get {table} {k} answered absent"),
                    Err(e) => assert!(
                        e.to_string().contains("owned elsewhere")
                            || e.to_string().contains("not owned here"),
                        "instance {n}: get {table} {k}: {e}"
                    ),
                }
            }
        }
        assert!(found > 0, "instance {n} found no key of its own");
    }

    // Detection: only in-crc contradicts its declaration, and CRC32 is
    // named as what fits.
    let total = |topic: &str, f: fn(&strata::partitioner::RouteCheck) -> u64| -> u64 {
        apps.iter()
            .map(|a| a.registry().route_check(topic).map_or(0, |c| f(&c)))
            .sum()
    };
    assert!(total("in-crc", |c| c.mismatched()) > 0);
    for topic in ["in-crc-ok", "in-murmur", "in-explicit"] {
        assert_eq!(total(topic, |c| c.mismatched()), 0, "{topic}");
        assert_eq!(
            total(topic, |c| c.checked()),
            KEYS as u64 * ROUNDS as u64,
            "{topic}: every record checked once"
        );
    }
    let crc = apps
        .iter()
        .find_map(|a| {
            a.registry()
                .route_check("in-crc")
                .filter(|c| c.mismatched() > 0)
        })
        .unwrap();
    assert_eq!(crc.fitting(), vec!["crc32"]);
    // Once contradicted (here, or announced by another instance), a table
    // is not routed by hash; declared-and-right ones are.
    for a in &apps {
        assert_eq!(a.partition_of("crc_sums", b"user-001"), None);
        assert_eq!(a.partition_of("explicit_sums", b"user-001"), None);
        assert_eq!(
            a.partition_of("crc_ok_sums", b"user-001"),
            Partitioner::Crc32.partition(b"user-001", PARTITIONS)
        );
        assert_eq!(
            a.partition_of("murmur_sums", b"user-001"),
            Partitioner::Murmur2.partition(b"user-001", PARTITIONS)
        );
    }
    let metrics = apps
        .iter()
        .map(|a| a.registry().prometheus())
        .collect::<String>();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "strata_partitioner_mismatched_records_total{topic=\"in-crc\",partitioner=\"murmur2\"} "
        ) && !l.ends_with(" 0")),
        "{metrics}"
    );
    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).to_string();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not where the declared partitioner puts their keys"))
        .collect();
    assert!(!warnings.is_empty(), "no mismatch warning");
    for w in &warnings {
        assert!(w.contains("topic=in-crc "), "{w}");
        assert!(w.contains("Partitioner::Crc32"), "{w}");
    }
    // Once per topic and instance.
    assert!(warnings.len() <= apps.len(), "{warnings:?}");

    for app in apps {
        app.shutdown().unwrap();
    }
}
