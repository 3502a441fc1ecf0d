//! Exactly-once when a commit's outcome is unknown (a timeout), in process
//! against Tansu, with failpoints (the `fail` crate, on in tests) standing
//! in for the timeout: the task must never begin another transaction on
//! that producer; it is reopened with a new producer (which resolves the
//! transaction by fencing the old one), its local state rolled back to the
//! checkpoint and restored to what committed, its input read again from
//! the committed offsets. Either way nothing is lost and nothing counted
//! twice:
//! - the transaction was left open (never committed): its records are
//!   aborted by the fencing, skipped by the restore, and processed again;
//! - the transaction did commit: the restore applies it, and its input is
//!   not processed again;
//! - the task's very first transaction was left open: with no committed
//!   offset to go back to, the reopened task starts where its first
//!   incarnation did.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strata::serde::{Utf8, json};
use strata::{App, AppConfig, Guarantee, RunningApp, TableOptions, Topology};
use strata_test_support::words::{produce_words, word_counts};
use strata_testkit::Tansu;

const WORDS: u64 = 20;

fn counts(topic: &str) -> Topology {
    let t = Topology::new();
    t.stream(topic, Utf8, json::<u64>()).aggregate(
        "counts",
        TableOptions::default(),
        |_w, n: u64, old: Option<u64>| Some(old.unwrap_or(0) + n),
    );
    t
}

fn produce(tansu: &Tansu, topic: &str, from: u64, n: u64) {
    produce_words(&tansu.bootstrap(), topic, from, n, WORDS);
}

fn table(app: &RunningApp) -> BTreeMap<String, u64> {
    word_counts(app, WORDS)
}

/// Waits until every word counts `each`; fails on any other settled state.
fn wait_each(app: &RunningApp, each: u64) {
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let got = table(app);
        if got.len() == WORDS as usize && got.values().all(|&n| n == each) {
            return;
        }
        assert!(
            got.values().all(|&n| n <= each),
            "a record counted twice: {got:?}"
        );
        assert!(
            Instant::now() < end,
            "not converged to {each} each: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs 3,000 records through an app whose commit fails once at
/// `failpoint`: the very first commit if `first`, else one after the first
/// 1,000 records were committed.
fn run(tansu: &Tansu, app_id: &str, failpoint: &str, first: bool) -> (u64, u64) {
    // Each run its own input topic and group.
    let topic = format!("{app_id}-words");
    tansu.create_topic(&topic, 2).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut c = AppConfig::new(app_id, tansu.bootstrap());
    c.state_dir = state.path().to_path_buf();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.guarantee = Guarantee::ExactlyOnce;
    if first {
        fail::cfg(failpoint, "1*return").unwrap();
    }
    let app = App::new(c).unwrap().start(counts(&topic)).unwrap();
    produce(tansu, &topic, 0, 1_000);
    if !first {
        wait_each(&app, 50);
        // The next commit's outcome is unknown.
        fail::cfg(failpoint, "1*return").unwrap();
    }
    produce(tansu, &topic, 1_000, 1_000);
    let end = Instant::now() + Duration::from_secs(60);
    while app.registry().reopens().is_empty() {
        assert!(Instant::now() < end, "no task was reopened");
        std::thread::sleep(Duration::from_millis(20));
    }
    fail::remove(failpoint);
    produce(tansu, &topic, 2_000, 1_000);
    wait_each(&app, 150);
    let reopens = app.registry().reopens().values().sum();
    let skipped = app.registry().aborted_records_skipped();
    app.shutdown().unwrap();
    (reopens, skipped)
}

#[test]
fn an_unknown_commit_outcome_reopens_the_task_and_counts_everything_once() {
    let _scenario = fail::FailScenario::setup();
    let tansu = Tansu::start().unwrap();
    let (reopens, skipped) = run(&tansu, "unknown-open", "txn-commit-unknown-open", false);
    assert_eq!(reopens, 1);
    assert!(
        skipped > 0,
        "the abandoned transaction's changelog records must be skipped by the restore"
    );
    println!("left open: 1 task reopened, {skipped} aborted changelog records skipped");
    let (reopens, skipped) = run(
        &tansu,
        "unknown-committed",
        "txn-commit-unknown-committed",
        false,
    );
    assert_eq!(reopens, 1);
    assert_eq!(skipped, 0, "a committed transaction has nothing to skip");
    println!("committed: 1 task reopened, nothing skipped, nothing counted twice");
    // The task's very first commit: nothing committed yet, so the reopened
    // task must start from where its first incarnation started, not where
    // the consumer stands.
    let (reopens, _) = run(&tansu, "unknown-first", "txn-commit-unknown-open", true);
    assert_eq!(reopens, 1);
    println!("first commit left open: 1 task reopened, nothing lost, nothing counted twice");
}
