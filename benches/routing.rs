//! Get latency when a key's partition is known (routed) against when it is
//! not (scattered to every partition), and what confirming a miss costs.
//!
//! Setup, all in this process on one throwaway broker
//! (`strata_testkit::Tansu`): two input topics of 4 partitions holding the
//! same K keys, `events` (murmur2, the declared default: routed) and
//! `events-unknown` (declared `Partitioner::Unknown`: every Get asks every
//! partition); two instances, each owning some partitions; every request
//! goes to instance A, one at a time (closed loop, so the figures are the
//! latency of one request on an otherwise idle pair).
//!
//! Cases, each N requests over random keys, every reply checked:
//! - baseline: `grpc.health.v1.Health/Check` on A, the same server's
//!   cheapest call;
//! - routed Get, found (about half local, half forwarded one hop);
//! - scattered Get, found (`events-unknown`: 4 partitions asked at once);
//! - routed Get of an absent key with `confirm_misses` (the default): the
//!   hashed partition, then the 3 others;
//! - Get naming its partition (`GetRequest.partition`), found.
//!
//! Reported as p50/p99 and as ratios to the routed Get of the same run.
//! Nothing asserts a time. `cargo bench --bench routing -- --help`.

// A benchmark: panics on a failed step, prints its figures, measures raw RocksDB as its baseline and exits with a usage error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use strata::kafka::client::KafkaConfig;
use strata::kafka::output::OutputProducer;
use strata::partitioner::{Partitioner, partition_for};
use strata::serde::{Utf8, json};
use strata::{App, AppConfig, OutRecord, RunningApp, TableOptions, Topology};
use strata_proto::v1 as pb;
use strata_proto::v1::query_client::QueryClient;
use strata_testkit::Tansu;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PARTITIONS: u32 = 4;
const ROUTED: &str = "events";
const UNKNOWN: &str = "events-unknown";

fn topology() -> Topology {
    let t = Topology::new();
    for (topic, table) in [(ROUTED, "routed"), (UNKNOWN, "scattered")] {
        t.stream(topic, Utf8, json::<i64>()).aggregate(
            table,
            TableOptions::default(),
            |_k, v: i64, old: Option<i64>| Some(old.unwrap_or(0) + v),
        );
    }
    t
}

fn instance(tansu: &Tansu, id: &str, dir: &std::path::Path) -> Result<RunningApp> {
    let mut c = AppConfig::new("bench-routing", tansu.bootstrap());
    c.state_dir = dir.join(id);
    c.kafka.session_timeout = Duration::from_secs(6);
    c.grpc_listen = Some("127.0.0.1:0".parse()?);
    c.directory_interval = Duration::from_millis(200);
    c.partitioners.insert(UNKNOWN.into(), Partitioner::Unknown);
    App::new(c)?
        .start(topology())
        .context("starting an instance")
}

fn key(i: usize) -> String {
    format!("k{i:06}")
}

fn get(table: &str, k: &str, partition: Option<u32>) -> pb::GetRequest {
    pb::GetRequest {
        table: table.into(),
        key_ref: Some(pb::get_request::KeyRef::KeyJson(format!("{k:?}"))),
        partition,
        ..Default::default()
    }
}

struct Args {
    keys: usize,
    requests: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        keys: 20_000,
        requests: 5_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--keys" => a.keys = it.next().context("--keys N")?.parse()?,
            "--requests" => a.requests = it.next().context("--requests N")?.parse()?,
            "--quick" => (a.keys, a.requests) = (2_000, 500),
            "--bench" => {}
            "--help" | "-h" => {
                println!(
                    "cargo bench --bench routing -- [--keys N (20000)] [--requests N per case (5000)] [--quick]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other:?} (see --help)"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rdkafka::client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    println!(
        "command: cargo bench --bench routing -- --keys {} --requests {}",
        a.keys, a.requests
    );
    println!(
        "sizes:   {} keys in each of 2 topics of {PARTITIONS} partitions, 2 instances, {} sequential Gets per case to instance a",
        a.keys, a.requests
    );
    let tansu = Tansu::start()?;
    for t in [ROUTED, UNKNOWN] {
        tansu.create_topic(t, PARTITIONS)?;
    }
    let root = tempfile::tempdir()?;
    let ia = instance(&tansu, "a", root.path())?;
    std::thread::sleep(Duration::from_secs(3));
    let ib = instance(&tansu, "b", root.path())?;
    let end = Instant::now() + Duration::from_secs(120);
    while !(0..PARTITIONS).all(|p| {
        [&ia, &ib]
            .iter()
            .all(|i| i.directory().owner(strata_state::Partition(p)).is_some())
    }) || ia.registry().partitions().is_empty()
        || ib.registry().partitions().is_empty()
    {
        if Instant::now() > end {
            bail!("the two instances did not share the partitions");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let producer = OutputProducer::new(&KafkaConfig::new(tansu.bootstrap()), BTreeMap::new())?;
    for t in [ROUTED, UNKNOWN] {
        let records: Vec<OutRecord> = (0..a.keys)
            .map(|i| OutRecord {
                topic: t.into(),
                key: Some(key(i).into_bytes()),
                value: Some(b"1".to_vec()),
                headers: vec![],
            })
            .collect();
        for chunk in records.chunks(10_000) {
            producer.produce(chunk)?;
        }
    }
    let want = 2 * a.keys as u64;
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let c: u64 = [&ia, &ib]
            .iter()
            .flat_map(|i| i.registry().task_stats().into_values())
            .map(|s| s.records_in)
            .sum();
        if c >= want {
            break;
        }
        if Instant::now() > end {
            bail!("only {c} of {want} records processed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));

    let addr = ia.grpc_addr().context("no gRPC address")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local: std::collections::BTreeSet<u32> = ia
        .registry()
        .partitions()
        .iter()
        .map(|(_, p, _)| p.0)
        .collect();
    let rows = rt.block_on(async {
        let ch = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut q = QueryClient::new(ch.clone());
        let mut health = HealthClient::new(ch);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut rows = Vec::new();
        for case in ["baseline", "routed", "scattered", "miss", "named"] {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut hops = [0u64; 2];
            // Warm-up, then the measured requests.
            for n in 0..(a.requests / 10 + a.requests) {
                let i = (next() % a.keys as u64) as usize;
                let k = key(i);
                let t0 = Instant::now();
                let found = match case {
                    "baseline" => {
                        health
                            .check(HealthCheckRequest {
                                service: String::new(),
                            })
                            .await?;
                        true
                    }
                    "routed" => found(
                        q.get(get("routed", &k, None)).await?.into_inner(),
                        &mut hops,
                    ),
                    "scattered" => found(
                        q.get(get("scattered", &k, None)).await?.into_inner(),
                        &mut hops,
                    ),
                    "miss" => !found(
                        q.get(get("routed", &format!("absent-{i}"), None))
                            .await?
                            .into_inner(),
                        &mut hops,
                    ),
                    _ => {
                        let p = partition_for(k.as_bytes(), PARTITIONS).0;
                        found(
                            q.get(get("routed", &k, Some(p))).await?.into_inner(),
                            &mut hops,
                        )
                    }
                };
                let us = t0.elapsed().as_micros() as u64;
                if !found {
                    bail!("case {case}: key {k} answered wrongly");
                }
                if n >= a.requests / 10 {
                    h.record(us.max(1))?;
                }
            }
            rows.push((case, h, hops));
        }
        Ok::<_, anyhow::Error>(rows)
    })?;
    println!("instance a owns partitions {local:?}");
    let routed_p50 = rows[1].1.value_at_quantile(0.5) as f64;
    let routed_p99 = rows[1].1.value_at_quantile(0.99) as f64;
    println!(
        "\n| case | p50 µs | p99 µs | mean µs | p50 / routed | p99 / routed | replies served here / forwarded |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (case, h, hops) in &rows {
        let (p50, p99) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
        println!(
            "| {case} | {p50} | {p99} | {:.0} | {:.2} | {:.2} | {} / {} |",
            h.mean(),
            p50 as f64 / routed_p50,
            p99 as f64 / routed_p99,
            hops[0],
            hops[1]
        );
    }
    println!(
        "\nkey scatters counted by instance a: {}",
        ia.registry().key_scatters()
    );
    ia.shutdown()?;
    ib.shutdown()?;
    Ok(())
}

/// Whether the reply found the key; counts who served it.
fn found(r: pb::GetResponse, hops: &mut [u64; 2]) -> bool {
    if let Some(s) = &r.served {
        hops[usize::from(s.hops > 0)] += 1;
    }
    matches!(r.outcome, Some(pb::get_response::Outcome::Found(_)))
}
