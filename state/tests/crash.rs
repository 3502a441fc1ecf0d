//! Durability against a real process crash, and corrupt files on disk.
//!
//! The crash test re-runs this test binary as a child that commits in a
//! loop and reports each commit on stdout; the parent kills it with SIGKILL
//! mid-stream, reopens the store and checks it is exactly at a checkpoint:
//! no half-applied batch, nothing acknowledged lost (with the WAL on).

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
        let h = r
            .history(
                key.as_bytes(),
                &HistoryQuery {
                    limit: 100_000,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            h.entries.len() as u64,
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
