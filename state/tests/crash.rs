//! Durability against a real process crash, and corrupt files on disk.
//!
//! The crash test re-runs this test binary as a child that commits in a
//! loop and reports each commit on stdout; the parent kills it with SIGKILL
//! mid-stream, reopens the store and checks it is exactly at a checkpoint:
//! no half-applied batch, nothing acknowledged lost (with the WAL on).

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use strata_state::store::rocks::RocksConfig;
use strata_state::store::{RocksEnv, RocksStore};
use strata_state::{
    At, HistoryQuery, Partition, TableConfig, TableName, TablePartition, Timestamp, Version,
};

const KEYS: u64 = 64;
const CHILD_ENV: &str = "STRATA_CRASH_CHILD_DIR";

fn env(wal: bool) -> RocksEnv {
    RocksEnv::new(RocksConfig {
        wal,
        write_buffer_bytes: 256 << 10,
        write_buffer_budget_bytes: 4 << 20,
        block_cache_bytes: 8 << 20,
        ..RocksConfig::default()
    })
    .unwrap()
}

fn cfg() -> TableConfig {
    TableConfig::new(TableName::new("crash").unwrap(), Partition(0))
}

/// The child: commit `round` to every key, forever, reporting each commit.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let wal = std::env::var("STRATA_CRASH_WAL").as_deref() == Ok("1");
    let store = RocksStore::open(&dir, &env(wal)).unwrap();
    let mut t = TablePartition::open(store, cfg()).unwrap();
    let start = t.latest_version().0 / KEYS;
    for round in start + 1.. {
        for k in 0..KEYS {
            t.put(format!("key{k:03}").as_bytes(), &round.to_be_bytes(), None);
        }
        let c = t.commit(Timestamp(round), &[]).unwrap();
        println!("committed {} {}", round, c.versions.end().0);
    }
}

fn run_and_kill(dir: &std::path::Path, wal: bool, rounds: u64) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env("STRATA_CRASH_WAL", if wal { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = 0;
    let read_round = |line: std::io::Result<String>, last: &mut u64| {
        if let Some(rest) = line.unwrap().strip_prefix("committed ") {
            *last = rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    for line in lines.by_ref() {
        read_round(line, &mut last);
        if last >= rounds {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The child kept committing while the lines above were read: what it
    // acknowledged before it died is still in the pipe.
    for line in lines {
        read_round(line, &mut last);
    }
    assert!(last >= rounds, "the child stopped early at round {last}");
    last
}

/// How many versions `key` has.
fn history_len(r: &strata_state::PartitionReader<RocksStore>, key: &str) -> u64 {
    let q = HistoryQuery {
        limit: 100_000,
        ..Default::default()
    };
    r.history(key.as_bytes(), &q).unwrap().entries.len() as u64
}

fn check_consistent(dir: &std::path::Path, wal: bool, acknowledged: u64) -> u64 {
    let store = RocksStore::open(dir, &env(wal)).unwrap();
    let t = TablePartition::open(store, cfg()).unwrap();
    let v = t.latest_version().0;
    assert_eq!(v % KEYS, 0, "a half-applied batch: latest version {v}");
    let round = v / KEYS;
    if wal {
        assert!(
            round >= acknowledged,
            "with the WAL on, acknowledged round {acknowledged} was lost (found {round})"
        );
    }
    assert!(round <= acknowledged + 1, "more than was written: {round}");
    let r = t.reader();
    for k in 0..KEYS {
        let key = format!("key{k:03}");
        let got = r.get(key.as_bytes()).unwrap().expect("every key present");
        assert_eq!(
            got.value,
            round.to_be_bytes(),
            "{key} disagrees with the checkpoint"
        );
        assert_eq!(
            history_len(&r, &key),
            round,
            "{key} has one version per round"
        );
        let mid = r
            .get_at(
                key.as_bytes(),
                At::Version(Version(KEYS * (round / 2).max(1))),
            )
            .unwrap()
            .unwrap();
        assert_eq!(mid.value, (round / 2).max(1).to_be_bytes());
    }
    round
}

#[test]
fn sigkill_mid_stream_reopens_at_the_last_checkpoint() {
    for wal in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let acked = run_and_kill(dir.path(), wal, 150);
        let round = check_consistent(dir.path(), wal, acked);
        // Again, from the recovered state.
        let acked = run_and_kill(dir.path(), wal, round + 100);
        check_consistent(dir.path(), wal, acked);
    }
}

#[test]
fn corrupt_sst_files_give_errors_not_wrong_values() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(true);
    {
        let store = RocksStore::open(dir.path(), &e).unwrap();
        let mut t = TablePartition::open(store, cfg()).unwrap();
        for round in 1..=3u64 {
            for k in 0..2000u64 {
                t.put(format!("key{k:05}").as_bytes(), &[round as u8; 100], None);
            }
            t.commit(Timestamp(round), &[]).unwrap();
        }
        t.flush().unwrap();
    }
    // Damage the middle of the largest table file (values and history).
    let mut ssts: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .collect();
    ssts.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let mut damaged = 0;
    if let Some(p) = ssts.last() {
        {
            let mut bytes = std::fs::read(p).unwrap();
            let mid = bytes.len() / 3;
            for b in &mut bytes[mid..mid + 64] {
                *b ^= 0xA5;
            }
            std::fs::write(p, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "expected table files after a flush");
    // Opening may fail, or reads may: either way with a clear error, never
    // a wrong value and never a panic.
    let fresh_env = env(true);
    let t = match TablePartition::open_rocks(dir.path(), &fresh_env, cfg()) {
        Ok(t) => t,
        Err(err) => {
            assert!(err.to_string().contains("crash partition 0"), "{err}");
            eprintln!("open refused the damaged partition: {err}");
            return;
        }
    };
    let r = t.reader();
    let mut errors = 0;
    for k in 0..2000u64 {
        let key = format!("key{k:05}");
        for (at, want) in [(At::Latest, 3u8), (At::Version(Version(2000)), 1u8)] {
            match r.get_at(key.as_bytes(), at) {
                Ok(Some(v)) => assert_eq!(v.value, vec![want; 100], "{key}: a wrong value"),
                Ok(None) => panic!("{key}: silently absent"),
                Err(err) => {
                    assert!(err.is_corrupt(), "{err}");
                    assert!(err.to_string().contains("table crash partition 0"), "{err}");
                    errors += 1;
                }
            }
        }
    }
    assert!(errors > 0, "damaged files must be noticed");
    eprintln!("{errors} of 4000 reads (latest and as of v2000) reported corruption");
}

// Restores write their batches without the WAL and flush at the end. A
// crash mid-restore must leave the partition at a whole batch, never with a
// checkpoint ahead of its data; a crash after the restore, while commits go
// through the WAL, must lose neither the restored batches nor an
// acknowledged commit.

const RESTORE_CHILD_ENV: &str = "STRATA_RESTORE_CHILD_DIR";
/// Rounds in the changelog the child restores; each writes every key once.
const RESTORE_ROUNDS: u64 = 400;
const RESTORE_BATCH: usize = 500;

/// The changelog: round `r` sets every key to `r`, one version per key in
/// key order, so version `v` is key `(v - 1) % KEYS` of round
/// `(v - 1) / KEYS + 1`.
fn restore_log() -> strata_state::MemoryChangelog {
    let mut log = strata_state::MemoryChangelog::new();
    let mut t = TablePartition::open(strata_state::store::MemoryStore::new(), cfg()).unwrap();
    for round in 1..=RESTORE_ROUNDS {
        for k in 0..KEYS {
            t.put(format!("key{k:03}").as_bytes(), &round.to_be_bytes(), None);
        }
        t.commit_to(&mut log, Timestamp(round), &[]).unwrap();
    }
    log
}

/// A reader slowed down so the parent can kill the child mid-restore.
struct Slow(strata_state::MemoryChangelog);

impl strata_state::ChangelogReader for Slow {
    fn read(
        &mut self,
        from: strata_state::Offset,
        max: usize,
    ) -> strata_state::Result<strata_state::changelog::ChangelogBatch> {
        std::thread::sleep(std::time::Duration::from_millis(3));
        self.0.read(from, max)
    }
}

/// The child: restores the whole log, reporting each landed batch, then
/// commits rounds forever, reporting each commit.
#[test]
fn restore_crash_child() {
    let Ok(dir) = std::env::var(RESTORE_CHILD_ENV) else {
        return;
    };
    let store = RocksStore::open(&dir, &env(true)).unwrap();
    let mut t = TablePartition::open(store, cfg()).unwrap();
    let mut log = Slow(restore_log());
    t.restore_from(&mut log, RESTORE_BATCH, &mut |p| {
        println!("applied {}", p.applied);
    })
    .unwrap();
    println!("restored {}", t.latest_version().0);
    for round in RESTORE_ROUNDS + 1.. {
        for k in 0..KEYS {
            t.put(format!("key{k:03}").as_bytes(), &round.to_be_bytes(), None);
        }
        let c = t.commit(Timestamp(round), &[]).unwrap();
        println!("committed {} {}", round, c.versions.end().0);
    }
}

/// Runs the restore child until `stop` accepts a line, then kills it; the
/// last line for which `seen` was true.
fn run_restore_child_and_kill(dir: &std::path::Path, stop: impl Fn(&str) -> bool) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "restore_crash_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(RESTORE_CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = stop(&line);
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    seen.extend(lines.map(Result::unwrap));
    seen
}

/// Checks a reopened partition is exactly at its checkpoint: every key's
/// latest value and history agree with the version the checkpoint names,
/// and its changelog position is that version's offset. Returns the version.
fn check_restore_consistent(dir: &std::path::Path) -> u64 {
    let t = TablePartition::open_rocks(dir, &env(true), cfg()).unwrap();
    let v = t.latest_version().0;
    if v <= RESTORE_ROUNDS * KEYS {
        assert_eq!(
            t.checkpoint().changelog.map(|c| c.0.0),
            v.checked_sub(1),
            "the checkpoint's changelog position disagrees with its version {v}"
        );
    }
    let r = t.reader();
    for k in 0..KEYS {
        let key = format!("key{k:03}");
        // The last round whose write of this key is at or below v.
        let round = (v + KEYS - 1 - k) / KEYS;
        let got = r.get(key.as_bytes()).unwrap().map(|x| x.value);
        assert_eq!(
            got,
            (round > 0).then(|| round.to_be_bytes().to_vec()),
            "{key} disagrees with the checkpoint at version {v}"
        );
        assert_eq!(history_len(&r, &key), round, "{key}: one version per round");
    }
    v
}

fn last_number(lines: &[String], prefix: &str) -> Option<u64> {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
}

#[test]
fn sigkill_mid_restore_reopens_at_a_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let total = RESTORE_ROUNDS * KEYS;
    // Killed after a fifth of the log has landed.
    let lines = run_restore_child_and_kill(dir.path(), |l| {
        l.strip_prefix("applied ")
            .is_some_and(|n| n.parse::<u64>().unwrap() >= total / 5)
    });
    let acked = last_number(&lines, "applied ").unwrap();
    assert!(
        acked < total,
        "the child finished the restore before the kill"
    );
    let v = check_restore_consistent(dir.path());
    // Unlogged batches may be lost, never invented: at most the batches
    // landed or in flight when it died.
    assert!(
        v <= acked + 2 * RESTORE_BATCH as u64,
        "version {v} beyond what was written ({acked})"
    );
    assert_eq!(v % RESTORE_BATCH as u64, 0, "a partial batch: version {v}");
    eprintln!("killed mid-restore at {acked} applied records; reopened at version {v}");

    // The restore resumes from there and reaches the end.
    let mut t = TablePartition::open_rocks(dir.path(), &env(true), cfg()).unwrap();
    let p = t
        .restore_from(&mut restore_log(), RESTORE_BATCH, &mut |_| {})
        .unwrap();
    assert_eq!(p.read, total - v, "the restore resumed at the checkpoint");
    drop(t);
    assert_eq!(check_restore_consistent(dir.path()), total);
}

#[test]
fn sigkill_after_restore_keeps_restored_batches_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let total = RESTORE_ROUNDS * KEYS;
    // Killed once commits (through the WAL) follow the unlogged restore.
    let lines = run_restore_child_and_kill(dir.path(), |l| {
        l.strip_prefix("committed ").is_some_and(|n| {
            n.split(' ').next().unwrap().parse::<u64>().unwrap() >= RESTORE_ROUNDS + 20
        })
    });
    assert_eq!(last_number(&lines, "restored "), Some(total));
    let committed = last_number(&lines, "committed ").unwrap();
    let v = check_restore_consistent(dir.path());
    assert!(
        v >= committed * KEYS,
        "acknowledged round {committed} was lost: reopened at version {v}"
    );
}
