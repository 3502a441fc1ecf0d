//! Online replay on the embedded cluster: a table is rewound to a version
//! and its input reprocessed with "fixed" code (an operator whose behaviour
//! the test toggles), while the app runs. Checked against an oracle: the
//! tables' contents, the flags of the versions written, the headers of the
//! outputs, the task's other table (not applied twice), the progress, a
//! cancel (nothing after the pre-replay position processed twice), and the
//! Admin RPCs (dry run, apply, cancel, errors).

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Offset as KOffset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use strata::kafka::client::KafkaConfig;
use strata::kafka::output::OutputProducer;
use strata::serde::{Utf8, json};
use strata::{
    App, AppConfig, EmbeddedKafka, OutRecord, ReplayState, RunningApp, TableOptions, Topology,
};
use strata_proto::v1 as pb;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::query_client::QueryClient;
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};
use strata_state::{At, Offset, Partition, Version, VersionFlags};
use tonic::Code;

const KEYS: u64 = 5;

/// The operators' switches, shared with the test.
#[derive(Clone, Default)]
struct Switches {
    /// The "fixed" code: `sums` adds 100 times the value instead of the value.
    fixed: Arc<AtomicBool>,
    /// While replaying, the record at this offset blocks until `release`
    /// (u64::MAX: none).
    gate: Arc<AtomicU64>,
    reached: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
}

/// `sums` (old code: + v; fixed code: + 100 v), `counts` (records per
/// key: the task's other table) and `out` (each record's value as the code
/// computes it).
fn topology(sw: &Switches) -> Topology {
    let t = Topology::new();
    let s = t.stream("events", Utf8, json::<u64>());
    let gate = sw.clone();
    s.process(move |ctx, _k, _v| {
        let r = ctx.record();
        if r.replay && r.offset.0 == gate.gate.load(Ordering::SeqCst) {
            gate.reached.store(true, Ordering::SeqCst);
            while !gate.release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    });
    let fixed = sw.fixed.clone();
    s.aggregate(
        "sums",
        TableOptions::default(),
        move |_k, v: u64, old: Option<u64>| {
            let f = if fixed.load(Ordering::SeqCst) { 100 } else { 1 };
            Some(old.unwrap_or(0) + f * v)
        },
    );
    s.aggregate(
        "counts",
        TableOptions::default(),
        |_k, _v: u64, old: Option<u64>| Some(old.unwrap_or(0) + 1),
    );
    let fixed = sw.fixed.clone();
    s.map_values(move |_k: &String, v: u64| {
        if fixed.load(Ordering::SeqCst) {
            100 * v
        } else {
            v
        }
    })
    .to("out", Utf8, json::<u64>());
    t
}

fn config(kafka: &EmbeddedKafka, app: &str, state: &Path) -> AppConfig {
    let mut c = AppConfig::new(app, kafka.bootstrap_servers());
    c.state_dir = state.to_path_buf();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.manage_topics = false;
    c.worker_threads = 1;
    // One record per round: a command (cancel) is handled between two
    // records, so where a cancel lands is deterministic.
    c.poll_batch = 1;
    c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    c
}

fn key(i: u64) -> String {
    format!("k{}", i % KEYS)
}

/// Record `i` of the input: key `k(i % 5)`, value `i + 1`.
fn produce(kafka: &EmbeddedKafka, range: std::ops::Range<u64>) {
    let p = OutputProducer::new(
        &KafkaConfig::new(kafka.bootstrap_servers()),
        BTreeMap::new(),
    )
    .unwrap();
    let recs: Vec<OutRecord> = range
        .map(|i| OutRecord {
            topic: "events".into(),
            key: Some(key(i).into_bytes()),
            value: Some((i + 1).to_string().into_bytes()),
            headers: vec![],
        })
        .collect();
    p.produce(&recs).unwrap();
}

fn read(app: &RunningApp, table: &str) -> BTreeMap<String, u64> {
    let r = app.registry().reader(table, Partition(0)).unwrap();
    (0..KEYS)
        .filter_map(|i| {
            let k = key(i);
            r.get(&k.clone().to_key_bytes())
                .unwrap()
                .map(|v| (k, ValueCodec::<u64>::decode(&Bincode, &v.value).unwrap()))
        })
        .collect()
}

/// Waits until `counts` sums to `n` (every record processed and committed).
fn wait_counted(app: &RunningApp, n: u64) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if app.registry().reader("counts", Partition(0)).is_some()
            && read(app, "counts").values().sum::<u64>() == n
        {
            return;
        }
        assert!(Instant::now() < end, "counts: {:?}", read(app, "counts"));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_replay(app: &RunningApp, state: ReplayState) -> strata::ReplayProgress {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = app.registry().replay(Partition(0))
            && r.state == state
        {
            return r;
        }
        assert!(
            Instant::now() < end,
            "{:?}",
            app.registry().replay(Partition(0))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The oracle: record `i` adds `f(i) * (i + 1)` to its key's sum.
fn sums(records: impl Iterator<Item = u64>, fixed_from: u64) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for i in records {
        let f = if i >= fixed_from { 100 } else { 1 };
        *m.entry(key(i)).or_insert(0) += f * (i + 1);
    }
    m
}

fn counts(records: impl Iterator<Item = u64>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for i in records {
        *m.entry(key(i)).or_insert(0) += 1;
    }
    m
}

/// Every record of `out`: (value, replay header present, source offset).
fn outputs(kafka: &EmbeddedKafka, n: usize) -> Vec<(u64, bool, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "out-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, KOffset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        assert!(
            Instant::now() < end,
            "{} of {n} outputs: {got:?}",
            got.len()
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let h = m.headers().unwrap();
            let header = |name: &str| {
                h.iter()
                    .find(|x| x.key == name)
                    .map(|x| String::from_utf8_lossy(x.value.unwrap()).to_string())
            };
            let v: u64 = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let src = header("strata-source").unwrap();
            let off: u64 = src.rsplit('@').next().unwrap().parse().unwrap();
            got.push((v, header("strata-replay").as_deref() == Some("1"), off));
        }
    }
    // Nothing more than expected.
    assert!(
        c.poll(Duration::from_millis(500)).is_none(),
        "more outputs than {n}"
    );
    got
}

fn start(kafka: &EmbeddedKafka, app: &str, state: &Path, sw: &Switches) -> RunningApp {
    let cfg = config(kafka, app, state);
    kafka.create_app_topics(&cfg, &topology(sw), 1).unwrap();
    let app = App::new(cfg).unwrap().start(topology(sw)).unwrap();
    app.wait_running(1, Duration::from_secs(60)).unwrap();
    app
}

/// Phase 1 (records 0..30) then phase 2 (30..50), committed apart: the
/// latest version after phase 1 is the replay target.
fn two_phases(kafka: &EmbeddedKafka, app: &RunningApp) -> Version {
    produce(kafka, 0..30);
    wait_counted(app, 30);
    let target = app
        .registry()
        .reader("sums", Partition(0))
        .unwrap()
        .latest_version();
    // Later commits get a later commit time (milliseconds).
    std::thread::sleep(Duration::from_millis(20));
    produce(kafka, 30..50);
    wait_counted(app, 50);
    target
}

#[test]
fn a_replay_recomputes_the_suffix_with_the_new_code_and_flags_it() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", 1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let sw = Switches::default();
    sw.gate.store(u64::MAX, Ordering::SeqCst);
    let app = start(&kafka, "rp", state.path(), &sw);
    let target = two_phases(&kafka, &app);
    assert_eq!(read(&app, "sums"), sums(0..50, u64::MAX));
    let sums_before = app
        .registry()
        .reader("sums", Partition(0))
        .unwrap()
        .latest_version();
    let counts_before = app
        .registry()
        .reader("counts", Partition(0))
        .unwrap()
        .latest_version();

    // A dry run plans, changes nothing.
    let plan = app
        .replay("sums", Partition(0), At::Version(target), true)
        .unwrap();
    assert_eq!(plan.progress.state, ReplayState::Planned);
    assert_eq!(plan.progress.seek[0].offset, Offset(30), "{plan:?}");
    assert_eq!(plan.progress.until[0].offset, Offset(50), "{plan:?}");
    assert_eq!(plan.rewind_of("sums").unwrap().target, target);
    assert_eq!(plan.rewind_of("sums").unwrap().changes.len(), KEYS as usize);
    assert_eq!(read(&app, "sums"), sums(0..50, u64::MAX));
    assert!(app.registry().replay(Partition(0)).is_none());

    // The fixed code is deployed; replay from the target.
    sw.fixed.store(true, Ordering::SeqCst);
    let started = app
        .replay("sums", Partition(0), At::Version(target), false)
        .unwrap();
    assert_eq!(started.progress.seek[0].offset, Offset(30));
    let done = wait_replay(&app, ReplayState::Done);
    assert_eq!(done.records, 20, "{done:?}");
    assert_eq!(done.remaining, 0);
    assert_eq!(done.position[0].offset, Offset(50));
    // Old code's effects up to the target, the new code's after it; the
    // other table is not applied twice.
    assert_eq!(read(&app, "sums"), sums(0..50, 30));
    assert_eq!(read(&app, "counts"), counts(0..50));
    // New records after the replay: the new code, unflagged.
    produce(&kafka, 50..60);
    wait_counted(&app, 60);
    assert_eq!(read(&app, "sums"), sums(0..60, 30));

    // The versions: per table, first the rewind's (flagged REWIND, no
    // lineage), then the replay's (flagged REPLAY, lineage 30..49), then
    // the new records' (unflagged).
    for (table, before) in [("sums", sums_before), ("counts", counts_before)] {
        let r = app.registry().reader(table, Partition(0)).unwrap();
        let mut kinds = Vec::new();
        for v in before.0 + 1..=r.latest_version().0 {
            let (rec, lineage) = r.version_lineage(Version(v)).unwrap().unwrap();
            let kind = if rec.flags.is_rewind() {
                assert!(lineage.is_none());
                "rewind"
            } else if rec.flags.contains(VersionFlags::REPLAY) {
                assert!((30..50).contains(&lineage.unwrap().offset.0));
                "replay"
            } else {
                assert!(lineage.unwrap().offset.0 >= 50);
                "new"
            };
            if kinds.last().map(|(k, _)| *k) != Some(kind) {
                kinds.push((kind, 0));
            }
            kinds.last_mut().unwrap().1 += 1;
        }
        assert_eq!(
            kinds,
            vec![("rewind", KEYS), ("replay", 20), ("new", 10)],
            "{table}"
        );
    }

    // Outputs: 50 originals, 20 replayed (flagged, new values), 10 new.
    let out = outputs(&kafka, 80);
    for (i, (v, replay, off)) in out.iter().enumerate() {
        let (want_off, fixed, flagged) = match i {
            0..50 => (i as u64, false, false),
            50..70 => (i as u64 - 20, true, true),
            _ => (i as u64 - 20, true, false),
        };
        let want = (want_off + 1) * if fixed { 100 } else { 1 };
        assert_eq!((*v, *replay, *off), (want, flagged, want_off), "output {i}");
    }
    let text = app.registry().prometheus();
    assert!(
        text.contains("strata_replay_records{partition=\"0\"} 20"),
        "{text}"
    );
    assert!(
        text.contains("strata_replay_active{partition=\"0\"} 0"),
        "{text}"
    );
    app.shutdown().unwrap();
}

#[test]
fn a_cancelled_replay_seeks_forward_and_processes_nothing_twice() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", 1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let sw = Switches::default();
    // The replay blocks on record 35 (the sixth it replays).
    sw.gate.store(35, Ordering::SeqCst);
    let app = start(&kafka, "rc", state.path(), &sw);
    let target = two_phases(&kafka, &app);
    sw.fixed.store(true, Ordering::SeqCst);
    let started = app
        .replay("sums", Partition(0), At::Version(target), false)
        .unwrap();
    assert_eq!(started.progress.seek[0].offset, Offset(30));
    let end = Instant::now() + Duration::from_secs(60);
    while !sw.reached.load(Ordering::SeqCst) {
        assert!(Instant::now() < end, "the replay never reached record 35");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The worker is inside record 35; the cancel waits in its queue and is
    // handled before the next record (poll_batch = 1).
    let cancel = {
        let h = std::thread::spawn({
            let sw = sw.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                sw.release.store(true, Ordering::SeqCst);
            }
        });
        let r = app.cancel_replay(Partition(0)).unwrap().unwrap();
        h.join().unwrap();
        r
    };
    assert_eq!(cancel.state, ReplayState::Cancelled);
    assert_eq!(cancel.records, 6, "{cancel:?}");
    assert_eq!(cancel.position[0].offset, Offset(50), "sought forward");
    assert_eq!(
        app.registry().replay(Partition(0)).unwrap().state,
        ReplayState::Cancelled
    );
    assert!(app.cancel_replay(Partition(0)).unwrap().is_none());
    // Records 36..49 were rewound and are not processed again; new ones
    // are processed once, unflagged.
    produce(&kafka, 50..55);
    wait_counted(&app, 36 + 5);
    assert_eq!(read(&app, "counts"), counts((0..36).chain(50..55)));
    assert_eq!(read(&app, "sums"), sums((0..36).chain(50..55), 30));
    let out = outputs(&kafka, 50 + 6 + 5);
    let replayed: Vec<u64> = out.iter().filter(|o| o.1).map(|o| o.2).collect();
    assert_eq!(replayed, (30..36).collect::<Vec<_>>());
    let after: Vec<u64> = out[56..].iter().map(|o| o.2).collect();
    assert_eq!(after, (50..55).collect::<Vec<_>>());
    assert!(out[56..].iter().all(|o| !o.1));
    app.shutdown().unwrap();
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.unwrap_err();
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_through_the_admin_service() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", 1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let sw = Switches::default();
    sw.gate.store(u64::MAX, Ordering::SeqCst);
    let (app, target) = tokio::task::block_in_place(|| {
        let app = start(&kafka, "rg", state.path(), &sw);
        let target = two_phases(&kafka, &app);
        (app, target)
    });
    let addr = app.grpc_addr().unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::new(ch.clone());
    let mut q = QueryClient::new(ch);
    let req = |dry_run: bool| pb::RewindRequest {
        table: "sums".into(),
        partition: Some(0),
        to: Some(pb::At {
            point: Some(pb::at::Point::Version(target.0)),
        }),
        dry_run,
        replay: true,
        ..Default::default()
    };

    // Dry run: the plan and the seek offsets, nothing changed.
    let plan = admin.rewind(req(true)).await.unwrap().into_inner();
    let p = &plan.partitions[0];
    assert_eq!(p.status, pb::RewindStatus::Planned as i32, "{p:?}");
    assert_eq!(p.target_version, target.0);
    let rp = p.replay.as_ref().unwrap();
    assert_eq!(rp.state, pb::ReplayState::Planned as i32);
    assert_eq!(
        rp.seek,
        vec![pb::TopicOffset {
            topic: "events".into(),
            offset: 30
        }]
    );
    assert_eq!(rp.until[0].offset, 50);
    assert_eq!(p.other_tables.len(), 1);
    assert_eq!(p.other_tables[0].table, "counts");
    assert_eq!(p.other_tables[0].change_count, KEYS);
    assert!(p.other_tables[0].new_versions.is_none());
    assert_eq!(read(&app, "sums"), sums(0..50, u64::MAX));

    // Errors: unknown table, a key filter, a target before any input.
    let (c, m) = code(
        admin
            .rewind(pb::RewindRequest {
                table: "nope".into(),
                ..req(false)
            })
            .await,
    );
    assert_eq!(c, Code::NotFound, "{m}");
    let (c, m) = code(
        admin
            .rewind(pb::RewindRequest {
                keys: Some(pb::KeyFilter {
                    filter: Some(pb::key_filter::Filter::KeyJson("\"k1\"".into())),
                }),
                ..req(false)
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let (c, m) = code(
        admin
            .rewind(pb::RewindRequest {
                to: Some(pb::At {
                    point: Some(pb::at::Point::Version(0)),
                }),
                ..req(false)
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    let (c, m) = code(
        admin
            .cancel_replay(pb::CancelReplayRequest {
                table: "sums".into(),
                partition: Some(0),
                options: None,
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "nothing to cancel: {m}");
    assert_eq!(
        read(&app, "sums"),
        sums(0..50, u64::MAX),
        "errors change nothing"
    );

    // Apply.
    sw.fixed.store(true, Ordering::SeqCst);
    let done = admin.rewind(req(false)).await.unwrap().into_inner();
    let p = &done.partitions[0];
    assert_eq!(p.status, pb::RewindStatus::Applied as i32, "{p:?}");
    assert_eq!(p.replay.as_ref().unwrap().seek[0].offset, 30);
    let nv = p.new_versions.unwrap();
    assert_eq!(nv.last - nv.first + 1, KEYS);
    assert!(p.other_tables[0].new_versions.is_some());
    tokio::task::block_in_place(|| wait_replay(&app, ReplayState::Done));
    assert_eq!(read(&app, "sums"), sums(0..50, 30));
    assert_eq!(read(&app, "counts"), counts(0..50));
    // DescribeTable shows the replay.
    let d = q
        .describe_table(pb::DescribeTableRequest {
            table: "sums".into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    let r = d.partitions[0].replay.as_ref().unwrap();
    assert_eq!(r.state, pb::ReplayState::Done as i32);
    assert_eq!((r.records, r.remaining), (20, 0));
    assert!(r.ended_ms >= r.started_ms && r.started_ms > 0);
    tokio::task::block_in_place(|| app.shutdown().unwrap());
}
