//! Routed queries against a real Kafka-protocol broker (Tansu on
//! loopback), with two and three instances running as separate processes:
//! every key is readable from every instance with its owner's value and
//! version; scans over every partition return every key exactly once;
//! while a third instance joins, reads keep answering (retrying, then
//! reaching the new owner) and never go back in time; a change feed opened
//! before the rebalance delivers every committed change exactly once, in
//! version order, across it; a rewind sent to any instance is applied by
//! the owner and read back through history and as-of reads.
//!
//! Not here: a member leaving a group of three. Tansu 0.6 keeps a member
//! that sent LeaveGroup in the next generation's assignment (one of the
//! leaver's partitions stays unassigned until a later join), so that step
//! cannot be checked against it; `tansu_app` checks a leave in a group of
//! two, and the feed's and router's handling of a departing owner (its
//! tombstone, a broken stream) is the same as for a moving partition.
//!
//! Instances are this test binary re-run in "child" mode (`query_child`),
//! each with its gRPC server on a free loopback port, which it prints.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::{App, AppConfig};
use strata_proto::v1 as pb;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::query_client::QueryClient;
use strata_test_support::child::{ChildArgs, ChildProcess, child_command};
use strata_test_support::grpc::sums_topology as topology;
use strata_test_support::produce::record;
use strata_testkit::Tansu;
use tonic::Code;
use tonic::transport::Channel;

const PARTITIONS: u32 = 4;
const KEYS: u64 = 200;
const APP: &str = "routed";
const TABLE: &str = "sums";

fn key(i: u64) -> String {
    format!("k{i:03}")
}

/// Child mode: runs one instance with a gRPC server until its stop file
/// appears.
#[test]
fn query_child() {
    let Some(args) = ChildArgs::enter() else {
        return;
    };
    let mut c = AppConfig::new(args.app.clone(), args.bootstrap.clone());
    c.state_dir = args.state.clone();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.commit_interval = Duration::from_millis(100);
    c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    c.instance_id = Some(std::env::var("STRATA_QCHILD_ID").unwrap());
    c.directory_interval = Duration::from_millis(200);
    // Three members joining and leaving need the second round of an
    // incremental rebalance, which Tansu does not run (see
    // `RebalanceProtocol::Eager`): with cooperative-sticky the revoked
    // partitions stay unassigned.
    c.kafka.rebalance = strata::kafka::client::RebalanceProtocol::Eager;
    if let Ok(d) = std::env::var("STRATA_QCHILD_RDKAFKA_DEBUG") {
        c.kafka.overrides.insert("debug".into(), d);
    }
    let running = App::new(c).unwrap().start(topology()).unwrap();
    println!("CHILD GRPC {}", running.grpc_addr().unwrap());
    args.run_until_stopped(
        running,
        Duration::from_millis(50),
        |_| {},
        strata::RunningApp::shutdown,
    );
}

struct Instance {
    id: String,
    process: ChildProcess,
    addr: String,
}

impl Instance {
    fn start(tansu: &Tansu, id: &str, dir: &Path) -> Instance {
        let state = dir.join(id);
        std::fs::create_dir_all(&state).unwrap();
        let stop = dir.join(format!("stop-{id}"));
        let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
        let args = ChildArgs {
            bootstrap: tansu.bootstrap(),
            app: APP.into(),
            state,
            stop,
        };
        let mut process = ChildProcess::spawn(
            id,
            child_command("query_child", &args)
                .env("STRATA_QCHILD_ID", id)
                .env(
                    "RUST_LOG",
                    std::env::var("STRATA_QCHILD_LOG")
                        .unwrap_or_else(|_| "info,librdkafka=warn,strata::query=debug".into()),
                ),
            args.stop,
            log,
        );
        // The harness may have printed "test query_child ... " on the
        // same line.
        let addr = process
            .wait_for("CHILD GRPC ")
            .expect("the instance printed its address");
        Instance {
            id: id.to_string(),
            process,
            addr,
        }
    }

    async fn query(&self) -> QueryClient<Channel> {
        QueryClient::new(channel(&self.addr).await)
    }

    async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(channel(&self.addr).await)
    }

    fn stop(self) {
        self.process.stop();
    }
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Produces `n` records of amount 1, round robin over the keys; returns
/// per-key counts added.
fn produce(tansu: &Tansu, from: u64, n: u64, oracle: &mut BTreeMap<String, i64>) {
    let records = (from..from + n).map(|i| {
        let k = key(i % KEYS);
        *oracle.entry(k.clone()).or_default() += 1;
        record("events", k, "1")
    });
    strata_test_support::produce::produce(&tansu.bootstrap(), records);
}

fn get(k: &str) -> pb::GetRequest {
    pb::GetRequest {
        table: TABLE.into(),
        key_ref: Some(pb::get_request::KeyRef::KeyJson(format!("\"{k}\""))),
        ..Default::default()
    }
}

/// Waits until DescribeTable, asked of every instance, shows every
/// partition running on one of `ids` (each of them owning some) with the
/// same owners everywhere; returns partition -> owner.
async fn settled(instances: &[&Instance], timeout: Duration) -> BTreeMap<u32, String> {
    let end = Instant::now() + timeout;
    let ids: BTreeSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    loop {
        let mut views = Vec::new();
        for i in instances {
            let r = i
                .query()
                .await
                .describe_table(pb::DescribeTableRequest {
                    table: TABLE.into(),
                    options: None,
                })
                .await;
            let Ok(r) = r else {
                views.push(None);
                continue;
            };
            let owners: Option<BTreeMap<u32, String>> = r
                .into_inner()
                .partitions
                .into_iter()
                .map(|p| match (&p.state, &p.owner) {
                    (Some(pb::partition_info::State::Running(_)), Some(o)) => {
                        Some((p.partition, o.id.clone()))
                    }
                    _ => None,
                })
                .collect();
            views.push(owners);
        }
        let last = format!("{views:?}");
        if let Some(Some(first)) = views.first()
            && views.iter().all(|v| v.as_ref() == Some(first))
            && first.len() == PARTITIONS as usize
            && first.values().map(String::as_str).collect::<BTreeSet<_>>() == ids
        {
            return first.clone();
        }
        assert!(
            Instant::now() < end,
            "not settled on {ids:?} after {timeout:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every key reads its oracle value from every instance, with
/// the same version everywhere, served by its owner.
async fn every_key_everywhere(
    instances: &[&Instance],
    owners: &BTreeMap<u32, String>,
    oracle: &BTreeMap<String, i64>,
    timeout: Duration,
) {
    let end = Instant::now() + timeout;
    'again: loop {
        let mut seen: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for i in instances {
            let mut q = i.query().await;
            for (k, want) in oracle {
                let r = q.get(get(k)).await.unwrap().into_inner();
                let s = r.served.unwrap();
                assert_eq!(
                    s.instance.as_ref().unwrap().id,
                    owners[&s.partition],
                    "{k} asked of {} is served by its partition's owner",
                    i.id
                );
                assert_eq!(s.hops, u32::from(owners[&s.partition] != i.id));
                let (v, value) = match r.outcome {
                    Some(pb::get_response::Outcome::Found(e)) => {
                        (e.version, e.value_json.parse::<i64>().unwrap())
                    }
                    _ => (0, 0),
                };
                if value != *want {
                    assert!(
                        Instant::now() < end,
                        "{k} from {}: {value}, want {want}",
                        i.id
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'again;
                }
                if let Some(prev) = seen.insert(k.clone(), (v, value)) {
                    assert_eq!(
                        prev,
                        (v, value),
                        "{k}: the same version from every instance"
                    );
                }
            }
        }
        return;
    }
}

/// Every key of a scan over all partitions, following pages.
async fn scan_all(i: &Instance, page_size: u32) -> Vec<(String, i64)> {
    let mut q = i.query().await;
    let mut out = Vec::new();
    let mut token = Vec::new();
    loop {
        let r = q
            .scan(pb::ScanRequest {
                table: TABLE.into(),
                page_size,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.partial, "{:?}", r.unavailable);
        out.extend(r.items.into_iter().map(|it| {
            (
                serde_json::from_str::<String>(&it.key_json).unwrap(),
                it.entry.unwrap().value_json.parse().unwrap(),
            )
        }));
        token = r.next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

/// Reads from instances in a loop while the group rebalances: every
/// answer must be a value the key has had, never older than one read
/// before (reads are of committed state only, whoever serves them).
struct Reader {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<BTreeMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(addrs: Vec<String>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let mut clients = Vec::new();
            for a in &addrs {
                clients.push(QueryClient::new(channel(a).await));
            }
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let k = key(i % KEYS);
                let q = &mut clients[(i as usize) % addrs.len()];
                i += 1;
                let mut req = tonic::Request::new(get(&k));
                req.set_timeout(Duration::from_secs(5));
                match q.get(req).await {
                    Ok(r) => {
                        let v = match r.into_inner().outcome {
                            Some(pb::get_response::Outcome::Found(e)) => {
                                e.value_json.parse::<i64>().unwrap()
                            }
                            _ => 0,
                        };
                        let prev = last.insert(k.clone(), v).unwrap_or(0);
                        assert!(v >= prev, "{k} went back from {prev} to {v}");
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // A broken connection to the instance is not an
                        // answer; any answer must be UNAVAILABLE.
                        let transport = e.metadata().get("content-type").is_none()
                            && e.message().contains("transport error");
                        assert!(
                            transport
                                || matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
                            "reads during a rebalance fail only as unavailable: {e:?}"
                        );
                        *f.lock()
                            .unwrap()
                            .entry(format!("{:?}", e.code()))
                            .or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        Reader {
            stop,
            ok,
            failed,
            task,
        }
    }

    async fn finish(self) -> (u64, BTreeMap<String, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the reader's checks held");
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.lock().unwrap().clone(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_route_across_instances_and_rebalances() {
    let tansu = tokio::task::block_in_place(|| {
        let tansu = Tansu::start().unwrap();
        tansu.create_topic("events", PARTITIONS).unwrap();
        tansu
    });
    let dir = tempfile::tempdir().unwrap().keep();
    eprintln!("instance logs in {}", dir.display());
    let mut oracle = BTreeMap::new();
    let mut produced = 0;
    tokio::task::block_in_place(|| produce(&tansu, 0, 2_000, &mut oracle));
    produced += 2_000;

    // Two instances.
    let (a, b) = tokio::task::block_in_place(|| {
        let a = Instance::start(&tansu, "a", &dir);
        std::thread::sleep(Duration::from_secs(3));
        (a, Instance::start(&tansu, "b", &dir))
    });
    let owners = settled(&[&a, &b], Duration::from_secs(120)).await;
    println!("two instances: {owners:?}");
    every_key_everywhere(&[&a, &b], &owners, &oracle, Duration::from_secs(60)).await;
    for i in [&a, &b] {
        let keys = scan_all(i, 37).await;
        let want: Vec<(String, i64)> = oracle.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(
            keys, want,
            "a scan from {} returns every key exactly once",
            i.id
        );
    }

    // A feed of every change from the start, opened on `a` before the
    // rebalances.
    let mut feed = a
        .query()
        .await
        .subscribe(pb::SubscribeRequest {
            table: TABLE.into(),
            start: Some(pb::subscribe_request::Start::After(pb::Cursor::default())),
            max_batch: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let feed_task = tokio::spawn(async move {
        let mut next: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, 1)).collect();
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        let mut changes = 0u64;
        loop {
            let m = match feed.message().await {
                Ok(Some(m)) => m,
                Ok(None) => panic!("the feed ended"),
                Err(e) => panic!("the feed failed: {e:?}"),
            };
            for c in &m.changes {
                let e = c.entry.as_ref().unwrap();
                let want = next.get_mut(&c.partition).unwrap();
                assert_eq!(
                    e.version, *want,
                    "partition {}: in order, once, no gap",
                    c.partition
                );
                *want += 1;
                let k: String = serde_json::from_str(&c.key_json).unwrap();
                last.insert(k, e.value_json.parse().unwrap());
                changes += 1;
            }
            // The test reads this after the rebalances, then aborts the task.
            FEED.lock()
                .unwrap()
                .replace((next.clone(), last.clone(), changes));
        }
    });

    // Reads keep going while a third instance joins.
    // (Through `a`, which stays: a client of `b` sees `b` go away.)
    let reader = Reader::start(vec![a.addr.clone()]);
    let c = tokio::task::block_in_place(|| {
        produce(&tansu, produced, 1_000, &mut oracle);
        Instance::start(&tansu, "c", &dir)
    });
    produced += 1_000;
    let owners = settled(&[&a, &b, &c], Duration::from_secs(120)).await;
    println!("three instances: {owners:?}");
    every_key_everywhere(&[&a, &b, &c], &owners, &oracle, Duration::from_secs(60)).await;
    for i in [&a, &b, &c] {
        let keys = scan_all(i, 64).await;
        assert_eq!(
            keys.len(),
            KEYS as usize,
            "a scan from {} returns every key",
            i.id
        );
        assert!(
            keys.windows(2).all(|w| w[0].0 < w[1].0),
            "in key order, once"
        );
    }
    tokio::task::block_in_place(|| produce(&tansu, produced, 1_000, &mut oracle));
    let (ok, failed) = reader.finish().await;
    println!("reads during the rebalances: {ok} answered, failed by code: {failed:?}");
    assert!(ok > 0);
    every_key_everywhere(&[&a, &b, &c], &owners, &oracle, Duration::from_secs(60)).await;

    // The feed caught up with every committed change, exactly once.
    let mut latest: BTreeMap<u32, u64> = BTreeMap::new();
    let d = a
        .query()
        .await
        .describe_table(pb::DescribeTableRequest {
            table: TABLE.into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    for p in d.partitions {
        latest.insert(p.partition, p.latest_version);
    }
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let snap = FEED.lock().unwrap().clone();
        if let Some((next, last, changes)) = snap
            && next.iter().all(|(p, n)| *n == latest[p] + 1)
        {
            assert_eq!(changes, latest.values().sum::<u64>());
            assert_eq!(
                last, oracle,
                "the feed's last value of every key is the table's"
            );
            println!("the feed delivered {changes} changes across the rebalance, each once");
            break;
        }
        assert!(
            Instant::now() < end,
            "the feed did not reach {latest:?}: {:?}",
            FEED.lock().unwrap().as_ref().map(|s| s.0.clone())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    feed_task.abort();

    // A rewind sent to any instance is applied by each owner; history and
    // as-of reads show it.
    let k = key(5);
    let before_rewind = {
        let r = c.query().await.get(get(&k)).await.unwrap().into_inner();
        match r.outcome {
            Some(pb::get_response::Outcome::Found(e)) => e,
            _ => panic!("{k} is there"),
        }
    };
    let r = c
        .admin()
        .await
        .rewind(pb::RewindRequest {
            table: TABLE.into(),
            keys: Some(pb::KeyFilter {
                filter: Some(pb::key_filter::Filter::KeyJson(format!("\"{k}\""))),
            }),
            to: Some(pb::At {
                point: Some(pb::at::Point::TimeMs(1)),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.partitions.len(), 1);
    assert_eq!(r.partitions[0].status, pb::RewindStatus::Applied as i32);
    let h = a
        .query()
        .await
        .history(pb::HistoryRequest {
            table: TABLE.into(),
            key_ref: Some(pb::history_request::KeyRef::KeyJson(format!("\"{k}\""))),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(h.entries[0].deleted, "rewound to before the key existed");
    assert!(h.entries[0].flags.as_ref().unwrap().rewind);
    assert_eq!(h.entries[1].version, before_rewind.version);
    let mut asof = get(&k);
    asof.at = Some(pb::At {
        point: Some(pb::at::Point::TimeMs(before_rewind.time_ms)),
    });
    let r = a.query().await.get(asof).await.unwrap().into_inner();
    match r.outcome {
        Some(pb::get_response::Outcome::Found(e)) => {
            assert_eq!(e.value_json, before_rewind.value_json)
        }
        o => panic!("as of before the rewind: {o:?}"),
    }
    tokio::task::block_in_place(|| {
        c.stop();
        b.stop();
        a.stop();
    });
}

/// What the feed task has seen: per partition the next version expected,
/// every key's last value, and the number of changes.
type FeedState = (BTreeMap<u32, u64>, BTreeMap<String, i64>, u64);
static FEED: Mutex<Option<FeedState>> = Mutex::new(None);
