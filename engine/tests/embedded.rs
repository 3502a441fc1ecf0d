//! The runtime on the embedded (in-process) cluster: fast checks of
//! startup validation, metrics, and rebuilding unusable local state from
//! the changelog. The broker-level behaviour is tested against Tansu in
//! `tansu_app.rs`.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use strata_engine::kafka::output::OutputProducer;
use strata_engine::serde::{Utf8, json};
use strata_engine::{
    App, AppConfig, EmbeddedKafka, Error, OutRecord, RunningApp, TableOptions, Topology,
};
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};

fn counts() -> Topology {
    let t = Topology::new();
    t.stream("words", Utf8, json::<u64>()).aggregate(
        "counts",
        TableOptions::default(),
        |_w, n: u64, old: Option<u64>| Some(old.unwrap_or(0) + n),
    );
    t
}

fn config(kafka: &EmbeddedKafka, app: &str, state: &Path) -> AppConfig {
    let mut c = AppConfig::new(app, kafka.bootstrap_servers());
    c.state_dir = state.to_path_buf();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.manage_topics = false;
    c
}

fn produce(kafka: &EmbeddedKafka, n: u64) {
    let p = OutputProducer::new(
        &strata_engine::kafka::client::KafkaConfig::new(kafka.bootstrap_servers()),
        BTreeMap::new(),
    )
    .unwrap();
    let recs: Vec<OutRecord> = (0..n)
        .map(|i| OutRecord {
            topic: "words".into(),
            key: Some(format!("w{}", i % 20).into_bytes()),
            value: Some(b"1".to_vec()),
            headers: vec![],
        })
        .collect();
    p.produce(&recs).unwrap();
}

fn wait_total(app: &RunningApp, want: u64) -> BTreeMap<String, u64> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = BTreeMap::new();
        for i in 0..20 {
            let w = format!("w{i}");
            if let Some(r) = app.reader_for_key("counts", w.as_bytes())
                && let Some(v) = r.get(&w.clone().to_key_bytes()).unwrap()
            {
                got.insert(w, ValueCodec::<u64>::decode(&Bincode, &v.value).unwrap());
            }
        }
        if got.values().sum::<u64>() == want && got.len() == 20 {
            return got;
        }
        assert!(Instant::now() < end, "not converged: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn runs_reports_metrics_and_rebuilds_unusable_local_state() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("words", 2).unwrap();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&kafka, "wc", state.path());
    kafka.create_app_topics(&cfg, &counts(), 2).unwrap();
    produce(&kafka, 2_000);
    let app = App::new(cfg.clone()).unwrap().start(counts()).unwrap();
    app.wait_running(2, Duration::from_secs(60)).unwrap();
    let first = wait_total(&app, 2_000);
    assert!(first.values().all(|n| *n == 100));
    std::thread::sleep(Duration::from_millis(1_500));
    let text = app.registry().prometheus();
    let records_in: u64 = text
        .lines()
        .filter(|l| l.starts_with("strata_records_in_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(records_in, 2_000, "{text}");
    assert!(
        text.contains("strata_consumer_lag{topic=\"words\""),
        "{text}"
    );
    assert!(
        text.contains("strata_commit_latency_us{quantile=\"0.99\"}"),
        "{text}"
    );
    app.shutdown().unwrap();

    // Damage every table partition's files while the app is down.
    let mut damaged = 0;
    for p in 0..2 {
        let dir = state.path().join("wc").join("counts").join(p.to_string());
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST") || n == "CURRENT")
            {
                std::fs::write(&f, b"garbage").unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged >= 2);
    // The restart wipes them and rebuilds from the changelog, then goes on.
    produce(&kafka, 2_000);
    let app = App::new(cfg).unwrap().start(counts()).unwrap();
    app.wait_running(2, Duration::from_secs(60)).unwrap();
    let second = wait_total(&app, 4_000);
    assert!(second.values().all(|n| *n == 200), "{second:?}");
    app.shutdown().unwrap();
}

#[test]
fn startup_refuses_missing_and_mismatched_topics() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let t = counts();
    let err = App::new(config(&kafka, "x", state.path()))
        .unwrap()
        .start(t)
        .err()
        .expect("no input topic");
    assert!(
        err.to_string().contains("\"words\" does not exist"),
        "{err}"
    );

    kafka.create_topic("words", 2).unwrap();
    kafka.create_topic("clicks", 3).unwrap();
    let t = counts();
    t.stream("clicks", Utf8, Utf8).to("out", Utf8, Utf8);
    let err = App::new(config(&kafka, "x", state.path()))
        .unwrap()
        .start(t)
        .err()
        .expect("mismatch");
    assert!(matches!(err, Error::Topology(_)));
    assert!(err.to_string().contains("not co-partitioned"), "{err}");

    // manage_topics off: internal topics must already exist.
    let err = App::new(config(&kafka, "y", state.path()))
        .unwrap()
        .start(counts())
        .err()
        .expect("no changelog topic");
    assert!(err.to_string().contains("y-counts-changelog"), "{err}");
}

#[test]
fn configuration_errors_name_the_key() {
    let bad = |f: &dyn Fn(&mut AppConfig)| {
        let mut c = AppConfig::new("app", "127.0.0.1:9092");
        f(&mut c);
        App::new(c).expect_err("invalid").to_string()
    };
    assert!(bad(&|c| c.application_id = "bad id".into()).contains("application_id"));
    assert!(bad(&|c| c.commit_interval = Duration::ZERO).contains("commit_interval"));
    assert!(bad(&|c| c.worker_threads = 0).contains("worker_threads"));
    assert!(bad(&|c| c.worker_nice = 20).contains("worker_nice"));
    assert!(bad(&|c| c.kafka.bootstrap_servers = String::new()).contains("bootstrap_servers"));
    assert!(bad(&|c| c.rocks.block_cache_bytes = 10).contains("block_cache_bytes"));
}

#[test]
fn a_partitioner_for_a_topic_that_is_not_an_input_is_refused() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut c = config(&kafka, "p", state.path());
    c.partitioners.insert(
        "word".into(),
        strata_engine::partitioner::Partitioner::Crc32,
    );
    let err = App::new(c)
        .unwrap()
        .start(counts())
        .err()
        .expect("a typo in a topic name");
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("partitioners[\"word\"]"), "{msg}");
    assert!(msg.contains("\"words\""), "{msg}");
}
