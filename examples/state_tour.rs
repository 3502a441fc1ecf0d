//! A tour of Strata's versioned state store, on RocksDB in a temporary
//! directory: typed writes, latest values, a key's history, a read as of an
//! earlier time, a diff, a rewind (planned, then applied) and a reopen that
//! shows the commits are durable.
//!
//! Run it with `cargo run --example state_tour`. It needs no broker: the
//! `state` crate knows nothing of Kafka.

// An example program: prints what it shows; a failed step panics with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};
use strata_state::store::rocks::RocksConfig;
use strata_state::store::{RocksEnv, RocksStore};
use strata_state::{
    At, HistoryQuery, KeyRange, Lineage, Offset, Order, Partition, PartitionReader, ScanRequest,
    Table, TableConfig, TableName, TablePartition, Timestamp, Version, VersionFlags,
};

/// The value type: any serde type works; the typed API stores it as bincode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
}

/// Commit times are inputs, so the tour is deterministic: 2026-01-01T00:00:00Z
/// plus a few seconds.
const T0: u64 = 1_767_225_600_000;

fn at(seconds: u64) -> Timestamp {
    Timestamp(T0 + seconds * 1_000)
}

fn show_time(t: Timestamp) -> String {
    format!("t0+{}s", (t.0 - T0) / 1_000)
}

fn show_flags(f: VersionFlags) -> &'static str {
    if f.is_rewind() { " [rewind]" } else { "" }
}

fn account(owner: &str, balance: i64) -> Account {
    Account {
        owner: owner.into(),
        balance,
    }
}

fn decode(bytes: &[u8]) -> Result<Account> {
    Ok(ValueCodec::<Account>::decode(&Bincode, bytes)?)
}

fn show_account(bytes: &[u8]) -> Result<String> {
    let a = decode(bytes)?;
    Ok(format!("{} has {}", a.owner, a.balance))
}

fn show_key(key: &[u8]) -> Result<String> {
    Ok(String::decode_key(key)?)
}

/// Prints every live key of the partition at `point`, paging through a scan
/// pinned to one version.
fn print_table(reader: &PartitionReader<RocksStore>, point: At) -> Result<()> {
    let mut request = ScanRequest {
        range: KeyRange::all(),
        at: point,
        limit: 2,
        token: None,
    };
    loop {
        let page = reader.scan(&request)?;
        for (key, v) in &page.items {
            println!(
                "    {:<6} {}   (written by {} at {}{})",
                show_key(key)?,
                show_account(&v.value)?,
                v.version,
                show_time(v.time),
                show_flags(v.flags)
            );
        }
        match page.next {
            Some(token) => request.token = Some(token),
            None => return Ok(()),
        }
    }
}

fn open_table(env: &RocksEnv, dir: &std::path::Path) -> Result<Table<String, Account, RocksStore>> {
    let store = RocksStore::open(dir, env).context("opening the RocksDB store")?;
    let config = TableConfig::new(TableName::new("accounts")?, Partition(0));
    Ok(Table::new(TablePartition::open(store, config)?))
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // One environment per process: every partition store shares its block
    // cache and write-buffer budget.
    let env = RocksEnv::new(RocksConfig {
        block_cache_bytes: 32 << 20,
        write_buffer_budget_bytes: 16 << 20,
        write_buffer_bytes: 4 << 20,
        ..RocksConfig::default()
    })?;
    let mut table = open_table(&env, dir.path())?;
    println!(
        "opened table `accounts` partition 0 in {}",
        dir.path().display()
    );

    let (alice, bob, carol) = ("alice".to_string(), "bob".to_string(), "carol".to_string());
    let payment = |offset| {
        Some(Lineage {
            topic: "payments".into(),
            partition: Partition(0),
            offset: Offset(offset),
        })
    };

    // Mutations are staged, then committed in batches; each committed
    // mutation becomes a version.
    table.put(&alice, &account("Alice", 100), payment(0))?;
    table.put(&bob, &account("Bob", 50), payment(1))?;
    let c1 = table.commit(at(0))?;
    table.put(&alice, &account("Alice", 80), payment(2))?;
    table.put(&carol, &account("Carol", 20), payment(3))?;
    let c2 = table.commit(at(10))?;
    // Bad data arrives: Alice's balance jumps and Bob is deleted.
    table.put(&alice, &account("Alice", 1_000_000), payment(4))?;
    table.delete(&bob, payment(5));
    let c3 = table.commit(at(20))?;
    for (n, c) in [c1, c2, c3].iter().enumerate() {
        println!(
            "commit {} at {} wrote versions {}..={}",
            n + 1,
            show_time(c.time),
            c.versions.start(),
            c.versions.end()
        );
    }

    let reader = table.reader();
    let raw = reader.untyped().clone();

    println!("\nlatest values (version {}):", raw.latest_version());
    print_table(&raw, At::Latest)?;
    let latest_alice = reader.get(&alice)?.context("alice has a value")?;
    println!(
        "  typed read: alice = {:?} at {}",
        latest_alice.value, latest_alice.version
    );

    println!("\nhistory of alice, oldest first:");
    let history = raw.history(
        &alice.to_key_bytes(),
        &HistoryQuery {
            order: Order::Ascending,
            ..Default::default()
        },
    )?;
    for e in &history.entries {
        let value = match &e.value {
            Some(v) => show_account(v)?,
            None => "deleted".into(),
        };
        let cause = e
            .lineage
            .as_ref()
            .map(|l| format!(", from {}[{}]{}", l.topic, l.partition, l.offset))
            .unwrap_or_default();
        println!(
            "    {} at {}: {value}{cause}{}",
            e.version,
            show_time(e.time),
            show_flags(e.flags)
        );
    }

    let before_bad_data = At::Time(at(15));
    println!(
        "\nthe table as of {} (version {}):",
        show_time(at(15)),
        raw.resolve(before_bad_data)?
    );
    print_table(&raw, before_bad_data)?;

    println!("\ndiff from {} to latest:", show_time(at(15)));
    for d in raw.diff(before_bad_data, At::Latest, &KeyRange::all(), 1_000)? {
        let side = |v: &Option<strata_state::Versioned>| -> Result<String> {
            Ok(match v {
                Some(v) => show_account(&v.value)?,
                None => "absent".into(),
            })
        };
        println!(
            "    {:<6} {}  ->  {}",
            show_key(&d.key)?,
            side(&d.before)?,
            side(&d.after)?
        );
    }

    // A rewind is planned (a dry run changes nothing), then staged and
    // committed as new versions flagged REWIND, so it can itself be undone.
    let plan = table
        .partition()
        .plan_rewind(before_bad_data, &KeyRange::all())?;
    println!(
        "\nrewind plan: back to {} from {}, {} key(s) to change (dry run, nothing written)",
        plan.target,
        plan.from,
        plan.changes.len()
    );
    for d in &plan.changes {
        let to = match &d.before {
            Some(v) => format!("restore \"{}\"", show_account(&v.value)?),
            None => "delete".into(),
        };
        println!("    {:<6} {to}", show_key(&d.key)?);
    }
    table
        .partition()
        .rewind(before_bad_data, &KeyRange::all())?;
    let c4 = table.commit(at(30))?;
    println!(
        "rewind committed as versions {}..={} at {}",
        c4.versions.start(),
        c4.versions.end(),
        show_time(c4.time)
    );

    println!(
        "\nthe table after the rewind (version {}):",
        raw.latest_version()
    );
    print_table(&raw, At::Latest)?;
    println!(
        "  the bad data is still in history: alice at version 5 = {}",
        show_account(
            &raw.get_at(&alice.to_key_bytes(), At::Version(Version(5)))?
                .context("alice at v5")?
                .value
        )?
    );
    match raw.get_at(&alice.to_key_bytes(), At::Version(Version(99))) {
        Err(e) => println!("  a read at version 99 fails clearly: {e}"),
        Ok(v) => anyhow::bail!("a read of an uncommitted version succeeded: {v:?}"),
    }

    // Durability: the checkpoint is written in the same atomic batch as the
    // data, so a reopened partition is exactly at its last commit.
    let checkpoint = table.partition().checkpoint().clone();
    drop((reader, raw, table));
    let mut table = open_table(&env, dir.path())?;
    let reopened = table.partition().checkpoint().clone();
    println!(
        "\nreopened the store: checkpoint at {} ({}), same as before closing: {}",
        reopened.version,
        show_time(reopened.time),
        reopened == checkpoint
    );
    let raw = table.reader().untyped().clone();
    print_table(&raw, At::Latest)?;
    println!(
        "  and history survives: bob as of {} = {}",
        show_time(at(5)),
        show_account(
            &raw.get_at(&bob.to_key_bytes(), At::Time(at(5)))?
                .context("bob at t0+5s")?
                .value
        )?
    );
    Ok(())
}
