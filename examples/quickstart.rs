//! Strata's quickstart, on an embedded Kafka cluster (no broker to install):
//! produce a stream of orders, compute each customer's running totals in a
//! versioned table, then read latest values, a key's history, the table as
//! of an earlier time, and rewind it online.
//!
//! Run: `cargo run --example quickstart` (or `scripts/quickstart.sh` on a
//! fresh machine).
//!
//! With `--serve`, the app then keeps running with its gRPC query service on
//! 127.0.0.1:50051 (`--listen ADDR` or `STRATA_LISTEN` to change it) until
//! Ctrl-C, so that the `strata` CLI can query it from another terminal:
//! `cargo run -p strata-cli -- get customer_totals customer-07`.

// An example program: prints what it shows; a failed step panics with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use strata::kafka::output::OutputProducer;
use strata::serde::{Utf8, json};
use strata::state::codec::{Bincode, OrderedKey, ValueCodec};
use strata::state::{At, HistoryQuery, KeyRange, Order as Sort, Timestamp};
use strata::{App, AppConfig, EmbeddedKafka, OutRecord, RunningApp, TableOptions, Topology};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    customer: String,
    cents: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Totals {
    orders: u64,
    cents: i64,
}

const CUSTOMERS: usize = 50;
const PARTITIONS: u32 = 4;

fn orders(from: usize, n: usize) -> Vec<OutRecord> {
    (from..from + n)
        .map(|i| {
            let customer = format!("customer-{:02}", (i * 7) % CUSTOMERS);
            let order = Order {
                customer: customer.clone(),
                cents: (i % 90) as i64 + 10,
            };
            OutRecord {
                topic: "orders".into(),
                key: Some(customer.into_bytes()),
                value: Some(serde_json::to_vec(&order).unwrap()),
                headers: vec![],
            }
        })
        .collect()
}

fn processed(app: &RunningApp) -> u64 {
    app.registry()
        .task_stats()
        .values()
        .map(|s| s.records_in)
        .sum()
}

fn wait_processed(app: &RunningApp, n: u64) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    while processed(app) < n {
        if Instant::now() > end {
            bail!("only {} of {n} orders processed after 60 s", processed(app));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn totals(app: &RunningApp, customer: &str, at: At) -> anyhow::Result<Option<(u64, Totals)>> {
    let reader = app
        .reader_for_key("customer_totals", customer.as_bytes())
        .context("partition not owned here")?;
    let key = customer.to_string().to_key_bytes();
    Ok(reader.get_at(&key, at)?.map(|v| {
        (
            v.version.0,
            ValueCodec::<Totals>::decode(&Bincode, &v.value).unwrap(),
        )
    }))
}

/// `--serve [--listen ADDR]`: where to serve gRPC after the tour, if at all.
fn serve_addr() -> anyhow::Result<Option<SocketAddr>> {
    let mut serve = false;
    let mut listen = std::env::var("STRATA_LISTEN").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--serve" => serve = true,
            "--listen" => listen = args.next().context("--listen needs an address")?,
            other => {
                bail!("unknown argument `{other}`: the quickstart takes --serve [--listen ADDR]")
            }
        }
    }
    if !serve {
        return Ok(None);
    }
    let addr = listen
        .parse()
        .with_context(|| format!("--listen `{listen}` is not an address like 127.0.0.1:50051"))?;
    Ok(Some(addr))
}

fn main() -> anyhow::Result<()> {
    let serve = serve_addr()?;
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let started = Instant::now();
    let kafka = EmbeddedKafka::start(1)?;
    kafka.create_topic("orders", PARTITIONS)?;
    println!("embedded Kafka at {}", kafka.bootstrap_servers());

    // The app: per-customer totals in a versioned table.
    let topology = Topology::new();
    topology.stream("orders", Utf8, json::<Order>()).aggregate(
        "customer_totals",
        TableOptions::default(),
        |_customer, order: Order, old: Option<Totals>| {
            let mut t = old.unwrap_or_default();
            t.orders += 1;
            t.cents += order.cents;
            Some(t)
        },
    );
    let state = tempfile::tempdir()?;
    let mut config = AppConfig::new("quickstart", kafka.bootstrap_servers());
    config.state_dir = state.path().to_path_buf();
    config.kafka.session_timeout = Duration::from_secs(6);
    config.manage_topics = false; // the embedded cluster has no admin API
    config.grpc_listen = serve;
    kafka.create_app_topics(&config, &topology, PARTITIONS)?;
    let app = App::new(config.clone())?
        .start(topology)
        .with_context(|| match serve {
            Some(a) => format!(
                "starting the app with gRPC on {a} (port taken? pass --listen 127.0.0.1:PORT)"
            ),
            None => "starting the app".into(),
        })?;
    app.wait_running(PARTITIONS as usize, Duration::from_secs(60))?;

    // Two waves of orders, with a moment between them.
    let producer = OutputProducer::new(&config.kafka, BTreeMap::new())?;
    producer.produce(&orders(0, 5_000))?;
    wait_processed(&app, 5_000)?;
    std::thread::sleep(Duration::from_millis(300));
    let between = Timestamp::now();
    std::thread::sleep(Duration::from_millis(300));
    producer.produce(&orders(5_000, 5_000))?;
    wait_processed(&app, 10_000)?;
    std::thread::sleep(Duration::from_millis(300));
    println!("processed 10,000 orders into customer_totals");

    println!("\nlatest totals:");
    for c in ["customer-00", "customer-07", "customer-21"] {
        let (v, t) = totals(&app, c, At::Latest)?.context("missing")?;
        println!(
            "  {c}: {} orders, {} cents (version {v})",
            t.orders, t.cents
        );
    }

    let c = "customer-07";
    let reader = app
        .reader_for_key("customer_totals", c.as_bytes())
        .context("not owned")?;
    let h = reader.history(
        &c.to_string().to_key_bytes(),
        &HistoryQuery {
            limit: 3,
            order: Sort::Descending,
            ..Default::default()
        },
    )?;
    println!("\nlast 3 versions of {c}:");
    for e in &h.entries {
        let t: Totals = ValueCodec::decode(&Bincode, e.value.as_deref().unwrap_or_default())?;
        let src = e
            .lineage
            .as_ref()
            .map(|l| format!("{}/{}@{}", l.topic, l.partition.0, l.offset.0))
            .unwrap_or_default();
        println!(
            "  version {} at {}: {} orders, {} cents (from {src})",
            e.version.0,
            e.time.rfc3339(),
            t.orders,
            t.cents
        );
    }

    let (_, before) = totals(&app, c, At::Time(between))?.context("missing then")?;
    println!(
        "\n{c} as of the moment between the waves ({}): {} orders, {} cents",
        between.rfc3339(),
        before.orders,
        before.cents
    );

    // Rewind the customer's partition to that moment: dry run, then for real.
    let p = app
        .partition_of("customer_totals", c.as_bytes())
        .context("the key cannot be routed")?;
    let plan = app.rewind(
        "customer_totals",
        p,
        At::Time(between),
        KeyRange::all(),
        true,
    )?;
    println!(
        "\nrewind of partition {} to the moment between the waves would change {} keys (dry run)",
        p.0,
        plan.changes.len()
    );
    let done = app.rewind(
        "customer_totals",
        p,
        At::Time(between),
        KeyRange::all(),
        false,
    )?;
    let (v, after) = totals(&app, c, At::Latest)?.context("missing after")?;
    let flags = reader
        .get(&c.to_string().to_key_bytes())?
        .map(|x| x.flags)
        .unwrap_or_default();
    println!(
        "rewound {} keys; {c} is now {} orders, {} cents (version {v}, rewind flag {})",
        done.changes.len(),
        after.orders,
        after.cents,
        flags.is_rewind()
    );
    if after != before {
        bail!("the rewind did not restore {c}'s earlier totals");
    }
    // The rewind is itself a version: undo it.
    let undo = app.rewind(
        "customer_totals",
        p,
        At::Version(plan.from),
        KeyRange::all(),
        false,
    )?;
    let (_, again) = totals(&app, c, At::Latest)?.context("missing")?;
    println!(
        "undid the rewind ({} keys): {c} is back to {} orders, {} cents",
        undo.changes.len(),
        again.orders,
        again.cents
    );

    let stats = app.registry().task_stats();
    println!(
        "\ncommits: {}, changelog records: {}",
        stats.values().map(|s| s.commits).sum::<u64>(),
        stats.values().map(|s| s.changelog_records).sum::<u64>()
    );
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    let Some(addr) = app.grpc_addr() else {
        app.shutdown()?;
        return Ok(());
    };
    // The CLI's default endpoint needs no flag.
    let flag = if addr.to_string() == "127.0.0.1:50051" {
        String::new()
    } else {
        format!("--endpoint http://{addr} ")
    };
    println!(
        "\nserving customer_totals over gRPC on http://{addr} until Ctrl-C; in another terminal:"
    );
    for cmd in [
        "tables",
        "get customer_totals customer-07",
        "history customer_totals customer-07 --limit 5",
    ] {
        println!("  cargo run -p strata-cli -- {flag}{cmd}");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(app.run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        }))?;
    println!("stopped");
    Ok(())
}
