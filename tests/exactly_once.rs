//! Exactly-once against Tansu (in-process apps): commits are
//! transactions of a per-task producer, every changelog record and output
//! names its transaction, a restart goes on from the committed state, and
//! a table holds each input record's effect once. (librdkafka's
//! mock cluster, the embedded broker, accepts transactional offset commits
//! but does not keep them, so exactly-once needs a real broker.) Separate
//! processes, kill -9 and a frozen owner are in `tests/faults.rs`.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use strata::kafka::txn::{TXN_HEADER, TxnTag};
use strata::serde::{Utf8, json};
use strata::{App, AppConfig, Guarantee, RunningApp, TableOptions, Topology};
use strata_test_support::words::{produce_words, word_counts};
use strata_testkit::Tansu;

const WORDS: usize = 20;

fn counts() -> Topology {
    let t = Topology::new();
    let table = t.stream("words", Utf8, json::<u64>()).aggregate(
        "counts",
        TableOptions::default(),
        |_w, n: u64, old: Option<u64>| Some(old.unwrap_or(0) + n),
    );
    table.changes().to("totals", Utf8, json::<Option<u64>>());
    t
}

fn config(kafka: &Tansu, state: &Path) -> AppConfig {
    let mut c = AppConfig::new("eos", kafka.bootstrap());
    c.state_dir = state.to_path_buf();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.guarantee = Guarantee::ExactlyOnce;
    c
}

fn produce(kafka: &Tansu, from: u64, n: u64) {
    produce_words(&kafka.bootstrap(), "words", from, n, WORDS as u64);
}

fn table(app: &RunningApp) -> BTreeMap<String, u64> {
    word_counts(app, WORDS as u64)
}

fn wait_total(app: &RunningApp, want: u64) -> BTreeMap<String, u64> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let got = table(app);
        if got.values().sum::<u64>() == want && got.len() == WORDS {
            return got;
        }
        assert!(Instant::now() < end, "not converged to {want}: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every record of `topic` (all partitions), read to the end, with its
/// transaction tag.
fn read_tags(kafka: &Tansu, topic: &str, partitions: i32) -> Vec<(i32, Option<TxnTag>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "checker")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let (mut out, mut eof) = (Vec::new(), 0);
    let end = Instant::now() + Duration::from_secs(30);
    while eof < partitions {
        assert!(Instant::now() < end, "no end of {topic}");
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let tag = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == TXN_HEADER))
                    .map(|h| TxnTag::decode(h.value.unwrap()).unwrap());
                out.push((m.partition(), tag));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    out
}

#[test]
fn commits_are_transactions_and_a_restart_goes_on_from_the_committed_state() {
    let kafka = Tansu::start().unwrap();
    kafka.create_topic("words", 2).unwrap();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&kafka, state.path());
    produce(&kafka, 0, 2_000);
    let app = App::new(cfg.clone()).unwrap().start(counts()).unwrap();
    let first = wait_total(&app, 2_000);
    assert!(first.values().all(|&n| n == 100), "{first:?}");
    assert!(app.registry().reopens().is_empty());
    app.shutdown().unwrap();
    // Every changelog record and output names its transaction; each
    // partition's log starts with its epoch's fence.
    for topic in ["eos-counts-changelog", "totals"] {
        let recs = read_tags(&kafka, topic, 2);
        assert!(!recs.is_empty());
        assert!(
            recs.iter().all(|(_, t)| t.is_some()),
            "{topic}: an untagged record"
        );
    }
    let changelog = read_tags(&kafka, "eos-counts-changelog", 2);
    for p in 0..2 {
        let first = changelog.iter().find(|(q, _)| *q == p).unwrap().1.unwrap();
        assert!(
            matches!(first, TxnTag::Fence { id, base: None } if id.seq == 1),
            "partition {p} starts with {first:?}"
        );
    }

    // After a restart the table goes on from where it was (that the
    // restore reads only the tail is shown by its "restored records=0"
    // log line, not asserted here).
    produce(&kafka, 2_000, 1_000);
    let app = App::new(cfg.clone()).unwrap().start(counts()).unwrap();
    let second = wait_total(&app, 3_000);
    assert!(second.values().all(|&n| n == 150), "{second:?}");
    assert_eq!(app.registry().aborted_records_skipped(), 0);
    app.shutdown().unwrap();
    let changelog = read_tags(&kafka, "eos-counts-changelog", 2);
    let epochs: std::collections::BTreeSet<u32> = changelog
        .iter()
        .filter_map(|(_, t)| t.map(|t| t.id().epoch))
        .collect();
    assert_eq!(epochs.len(), 2, "one epoch per run: {epochs:?}");
    // The restart fenced at the first run's last commit (its base), so a
    // restore can tell what the first run committed.
    let second_fences: Vec<TxnTag> = changelog
        .iter()
        .filter_map(|(_, t)| *t)
        .filter(|t| matches!(t, TxnTag::Fence { base: Some(_), .. }))
        .collect();
    assert_eq!(second_fences.len(), 2, "{second_fences:?}");
}

/// A replay under exactly-once: the rewind, the seek and the reprocessing
/// all commit through the task's transactions. Replaying with the same code
/// recomputes the same table (nothing counted twice), the replayed versions
/// are flagged, and a restart restores the result.
#[test]
fn a_replay_under_exactly_once_recomputes_the_same_table() {
    use strata::ReplayState;
    use strata_state::VersionFlags;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let kafka = Tansu::start().unwrap();
    kafka.create_topic("words", 2).unwrap();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&kafka, state.path());
    // Two phases, so the first one's last version ends a commit with
    // input after it.
    produce(&kafka, 0, 1_000);
    let app = App::new(cfg.clone()).unwrap().start(counts()).unwrap();
    wait_total(&app, 1_000);
    let p = strata_state::Partition(0);
    let target = app.registry().reader("counts", p).unwrap().latest_version();
    produce(&kafka, 1_000, 1_000);
    wait_total(&app, 2_000);
    let latest = app.registry().reader("counts", p).unwrap().latest_version();
    assert!(latest > target);
    let outcome = app
        .replay("counts", p, strata_state::At::Version(target), false)
        .unwrap();
    assert!(!outcome.progress.seek.is_empty(), "{outcome:?}");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.registry().replay(p).unwrap();
        if r.state == ReplayState::Done {
            assert!(r.records > 0, "{r:?}");
            break;
        }
        assert!(Instant::now() < end, "replay not done: {r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = wait_total(&app, 2_000);
    assert!(after.values().all(|&n| n == 100), "{after:?}");
    // The reprocessed versions are flagged.
    let reader = app.registry().reader("counts", p).unwrap();
    let flags: Vec<VersionFlags> = (latest.0 + 1..=reader.latest_version().0)
        .filter_map(|v| reader.version_lineage(strata_state::Version(v)).unwrap())
        .map(|(rec, _)| rec.flags)
        .collect();
    assert!(
        flags.iter().any(|f| f.contains(VersionFlags::REWIND)),
        "no rewind version after {latest:?}"
    );
    assert!(
        flags.iter().any(|f| f.contains(VersionFlags::REPLAY)),
        "no replayed version after {latest:?}"
    );
    // (A reader keeps the partition's RocksDB open.)
    drop(reader);
    app.shutdown().unwrap();
    // A restart restores exactly that.
    let app = App::new(cfg).unwrap().start(counts()).unwrap();
    let again = wait_total(&app, 2_000);
    assert_eq!(again, after);
    app.shutdown().unwrap();
}
