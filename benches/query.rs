//! Queries over gRPC under load: Get and as-of Get, served locally and
//! forwarded, from an open-loop load generator on loopback, with the engine
//! idle and while it ingests at full speed; and the rate of a full-table
//! scan across partitions.
//!
//! Setup, all in this process on one throwaway broker
//! (`strata_testkit::Tansu`): an input topic of 4 partitions; two instances
//! of an app (`RunningApp`s with their own state dirs and gRPC servers,
//! eager rebalancing) computing a per-key sum; K keys preloaded with two
//! versions each, with a time T between the two rounds. The bench waits
//! until both instances' DescribeTable agree on an owner for every
//! partition, each owning some. Every request goes to instance A: keys of
//! A's partitions are served locally, keys of B's are forwarded (one hop).
//!
//! Cases, each for a fixed duration at a fixed target rate, spread over N
//! HTTP/2 connections:
//! - baseline: `grpc.health.v1.Health/Check` on A (a trivial tonic unary
//!   call on the same server), measured in the same run; every Get figure
//!   is reported as a ratio to it;
//! - Get latest, local keys and forwarded keys;
//! - as-of Get (time T, which reads each key's first version), local and
//!   forwarded.
//!
//! Each case runs with the engine idle, then again while a producer thread
//! pushes records as fast as it can (the engine's backlog bounded, so the
//! broker's memory stays bounded): the ingest rate (records committed per
//! second, from the instances' task stats) is measured during each case
//! and alone in windows of the same length either side of it.
//!
//! The load generator is open-loop: it sends request i at t0 + i / rate,
//! whatever happened to earlier requests (paced by a thread sleep, so sends
//! go out one or two at a time). Latency is from the actual send
//! to the reply; how late sends went out against the schedule is reported
//! separately, so a generator that falls behind shows. Every Get reply is
//! checked: found, served with the expected number of hops.
//!
//! Nothing asserts a time. Sizes: defaults, then `--quick`, then
//! `STRATA_BENCH_*` variables, then flags (`cargo bench --bench query --
//! --help`).

// A benchmark: panics on a failed step, prints its figures, measures raw RocksDB as its baseline and exits with a usage error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

#[path = "common/knobs.rs"]
mod knobs;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use prost::Message;
use strata::kafka::client::{KafkaConfig, RebalanceProtocol};
use strata::kafka::output::OutputProducer;
use strata::partitioner::partition_for;
use strata::serde::{Utf8, json};
use strata::{App, AppConfig, OutRecord, RunningApp, TableOptions, Topology};
use strata_proto::v1 as pb;
use strata_proto::v1::query_client::QueryClient;
use strata_state::codec::OrderedKey;
use strata_testkit::Tansu;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PARTITIONS: u32 = 4;
const INPUT: &str = "events";
const TABLE: &str = "sums";
const APP: &str = "bench-query";
/// Records per produce call.
const PRODUCE_BATCH: usize = 10_000;
/// While ingesting, the producer pauses when the engine is this many
/// records behind it (enough to keep the engine busy, bounded so the
/// broker's in-memory log stays small).
const MAX_BACKLOG: u64 = 1_000_000;
/// Requests in flight beyond which the generator drops a send (counted as
/// an error) instead of queueing without bound.
const MAX_IN_FLIGHT: u64 = 4_096;
/// Deadline of each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The same as a `grpc-timeout` header.
const REQUEST_TIMEOUT_HEADER: &str = "2S";
const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
const GET_PATH: &str = "/strata.v1.Query/Get";
/// Ingest runs this long before its rate is measured.
const INGEST_WARMUP: Duration = Duration::from_secs(3);
/// Items per scan page.
const SCAN_PAGE: u32 = 1_000;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------- sizes

#[derive(Clone, Debug)]
struct Sizes {
    keys: usize,
    rate: u64,
    secs: f64,
    clients: usize,
    workers: usize,
    server_threads: usize,
    gen_threads: usize,
    generator: Generator,
    worker_nice: u8,
    quick: bool,
}

/// The load generator's client stack.
#[derive(Clone, Copy, Debug)]
enum Generator {
    H2,
    Tonic,
}

/// (flag, environment variable, help).
const KNOBS: &[knobs::Knob] = &[
    (
        "--keys",
        "STRATA_BENCH_KEYS",
        "distinct keys preloaded (100,000; --quick 20,000)",
    ),
    (
        "--rate",
        "STRATA_BENCH_RATE",
        "target requests per second (10,000)",
    ),
    (
        "--secs",
        "STRATA_BENCH_SECS",
        "seconds per case and per ingest-alone window (8; --quick 1)",
    ),
    (
        "--clients",
        "STRATA_BENCH_CLIENTS",
        "HTTP/2 connections to the instance (4)",
    ),
    (
        "--workers",
        "STRATA_BENCH_WORKERS",
        "engine worker threads per instance (1)",
    ),
    (
        "--server-threads",
        "STRATA_BENCH_SERVER_THREADS",
        "gRPC server runtime threads per instance (1)",
    ),
    (
        "--gen-threads",
        "STRATA_BENCH_GEN_THREADS",
        "load generator runtime threads (1)",
    ),
    (
        "--generator",
        "STRATA_BENCH_GENERATOR",
        "load generator client: h2 (bare HTTP/2, pre-encoded requests) or tonic (h2)",
    ),
    (
        "--worker-nice",
        "STRATA_BENCH_WORKER_NICE",
        "AppConfig::worker_nice of both instances (10)",
    ),
];

fn set(s: &mut Sizes, flag: &str, raw: &str) -> Result<()> {
    let v = raw.replace('_', "");
    let n = || {
        v.parse::<usize>()
            .with_context(|| format!("{flag}: {raw:?} is not a count"))
    };
    match flag {
        "--keys" => s.keys = n()?,
        "--rate" => s.rate = n()? as u64,
        "--secs" => {
            s.secs = v
                .parse::<f64>()
                .with_context(|| format!("{flag}: {raw:?} is not a number of seconds"))?
        }
        "--clients" => s.clients = n()?,
        "--workers" => s.workers = n()?,
        "--server-threads" => s.server_threads = n()?,
        "--gen-threads" => s.gen_threads = n()?,
        "--generator" => {
            s.generator = match raw {
                "h2" => Generator::H2,
                "tonic" => Generator::Tonic,
                _ => bail!("{flag}: {raw:?} is not h2 or tonic"),
            }
        }
        "--worker-nice" => s.worker_nice = u8::try_from(n()?).context("--worker-nice")?,
        _ => bail!("unknown option {flag}"),
    }
    Ok(())
}

fn parse_sizes() -> Result<Sizes> {
    let s = knobs::parse(
        "query",
        KNOBS,
        |quick| Sizes {
            keys: if quick { 20_000 } else { 100_000 },
            rate: 10_000,
            secs: if quick { 1.0 } else { 8.0 },
            clients: 4,
            workers: 1,
            server_threads: 1,
            gen_threads: 1,
            generator: Generator::H2,
            worker_nice: 10,
            quick,
        },
        set,
    )?;
    if s.keys < 100
        || s.rate == 0
        || s.secs <= 0.0
        || s.clients == 0
        || s.workers == 0
        || s.server_threads == 0
        || s.gen_threads == 0
    {
        bail!("need at least 100 keys and positive sizes: {s:?}");
    }
    Ok(s)
}

fn print_command() {
    let mut env: Vec<String> = KNOBS
        .iter()
        .filter_map(|(_, var, _)| std::env::var(var).ok().map(|v| format!("{var}={v}")))
        .collect();
    if let Ok(v) = std::env::var("STRATA_BENCH_QUICK") {
        env.push(format!("STRATA_BENCH_QUICK={v}"));
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut cmd = env.join(" ");
    if !cmd.is_empty() {
        cmd.push(' ');
    }
    cmd += "cargo bench --bench query";
    if !args.is_empty() {
        cmd += &format!(" -- {}", args.join(" "));
    }
    println!("command: {cmd}");
}

// ---------------------------------------------------------------- machine

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {model}")
}

/// This process's CPU seconds (utime + stime, all threads).
fn self_cpu_secs() -> f64 {
    cpu_secs("/proc/self/stat")
}

/// CPU seconds of this process's live threads whose names start with
/// `prefix`.
fn threads_cpu_secs(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|e| cpu_secs(&e.path().join("stat").to_string_lossy()))
        .sum()
}

/// CPU seconds of the load generator: its runtime's threads and this
/// (main) thread, which paces the sends.
fn generator_cpu_secs() -> f64 {
    threads_cpu_secs("bench-loadgen")
        + cpu_secs(&format!("/proc/self/task/{}/stat", std::process::id()))
}

/// The broker's CPU seconds (our child process named `tansu`), or 0.
fn broker_cpu_secs() -> f64 {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in dir.flatten() {
        let Ok(line) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (line.find('('), line.rfind(')')) else {
            continue;
        };
        let ppid = line[close + 2..].split_whitespace().nth(1);
        if line[open + 1..close].starts_with("tansu") && ppid == Some(me.as_str()) {
            return cpu_secs(&e.path().join("stat").to_string_lossy());
        }
    }
    0.0
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn cpu_secs(path: &str) -> f64 {
    let Ok(line) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let Some(close) = line.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = line[close + 2..].split_whitespace().collect();
    let t: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    // CLK_TCK is 100 on Linux.
    t as f64 / 100.0
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`.
fn machine_jiffies() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    (busy, f.iter().take(8).sum())
}

// ---------------------------------------------------------------- data

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn key_name(k: usize) -> String {
    format!("k{k:06}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn topology() -> Topology {
    let t = Topology::new();
    t.stream(INPUT, Utf8, json::<i64>()).aggregate(
        TABLE,
        TableOptions::default(),
        |_k, v: i64, old: Option<i64>| Some(old.unwrap_or(0) + v),
    );
    t
}

fn records(names: &[String], idx: impl Iterator<Item = usize>) -> Vec<OutRecord> {
    let topic: Arc<str> = Arc::from(INPUT);
    idx.map(|k| OutRecord {
        topic: topic.clone(),
        key: Some(names[k].clone().into_bytes()),
        value: Some(b"1".to_vec()),
        headers: vec![],
    })
    .collect()
}

/// Records committed by both instances' tasks.
fn committed(apps: &[&RunningApp]) -> u64 {
    apps.iter()
        .flat_map(|a| a.registry().task_stats().into_values())
        .map(|t| t.records_in)
        .sum()
}

fn wait_committed(apps: &[&RunningApp], n: u64, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let c = committed(apps);
        if c >= n {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("only {c} of {n} records committed after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- instances

fn instance(tansu: &Tansu, s: &Sizes, id: &str, dir: &Path) -> Result<RunningApp> {
    let mut c = AppConfig::new(APP, tansu.bootstrap());
    c.state_dir = dir.join(id);
    c.kafka.session_timeout = Duration::from_secs(6);
    c.kafka.rebalance = RebalanceProtocol::Eager;
    c.grpc_listen = Some("127.0.0.1:0".parse()?);
    c.instance_id = Some(id.to_string());
    c.directory_interval = Duration::from_millis(200);
    c.worker_threads = s.workers;
    c.worker_nice = s.worker_nice;
    c.query.threads = s.server_threads;
    App::new(c)?
        .start(topology())
        .with_context(|| format!("starting instance {id}"))
}

async fn channel(addr: &str) -> Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// Waits until DescribeTable, asked of every instance, shows every
/// partition running with the same owners everywhere, each instance owning
/// some; returns partition -> owner id.
async fn settled(addrs: &[String], ids: &BTreeSet<String>) -> Result<BTreeMap<u32, String>> {
    let end = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut views = Vec::new();
        for a in addrs {
            let view = match channel(a).await {
                Ok(ch) => QueryClient::new(ch)
                    .describe_table(pb::DescribeTableRequest {
                        table: TABLE.into(),
                        options: None,
                    })
                    .await
                    .ok()
                    .and_then(|r| {
                        r.into_inner()
                            .partitions
                            .into_iter()
                            .map(|p| match (&p.state, &p.owner) {
                                (Some(pb::partition_info::State::Running(_)), Some(o)) => {
                                    Some((p.partition, o.id.clone()))
                                }
                                _ => None,
                            })
                            .collect::<Option<BTreeMap<u32, String>>>()
                    }),
                Err(_) => None,
            };
            views.push(view);
        }
        if let Some(Some(first)) = views.first()
            && views.iter().all(|v| v.as_ref() == Some(first))
            && first.len() == PARTITIONS as usize
            && first.values().cloned().collect::<BTreeSet<_>>() == *ids
        {
            return Ok(first.clone());
        }
        if Instant::now() > end {
            bail!("instances not settled after {SETTLE_TIMEOUT:?}: {views:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- load

/// What one case sends.
#[derive(Clone)]
enum Call {
    Health,
    /// Gets over these requests (picked by a hash of the request's
    /// number), expecting replies served after `hops` forwards. `frames`
    /// are the same requests encoded once as gRPC messages, for the h2
    /// generator.
    Get {
        requests: Arc<Vec<pb::GetRequest>>,
        frames: Arc<Vec<Bytes>>,
        hops: u32,
    },
}

impl Call {
    fn get(requests: Vec<pb::GetRequest>, hops: u32) -> Call {
        let frames = requests.iter().map(grpc_frame).collect();
        Call::Get {
            requests: Arc::new(requests),
            frames: Arc::new(frames),
            hops,
        }
    }
}

/// A gRPC length-prefixed message: uncompressed flag, length, protobuf.
fn grpc_frame(m: &impl Message) -> Bytes {
    let body = m.encode_to_vec();
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(0);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

/// The load generator's connections to the instance called.
#[derive(Clone)]
enum Conns {
    /// tonic clients (`--generator tonic`): the client stack an
    /// application would use.
    Tonic(Vec<Channel>),
    /// Bare HTTP/2 (`--generator h2`, the default): requests encoded once
    /// up front and sent as one DATA frame each on an h2 client connection,
    /// replies checked the same way; no tower buffer task, no per-call
    /// codec. Cheaper per request, so more of the 2 CPUs is left to what
    /// is measured.
    H2 {
        conns: Vec<h2::client::SendRequest<Bytes>>,
        authority: http::uri::Authority,
    },
}

impl Conns {
    fn len(&self) -> usize {
        match self {
            Conns::Tonic(c) => c.len(),
            Conns::H2 { conns, .. } => conns.len(),
        }
    }
}

/// Opens `n` HTTP/2 connections to `addr` (TCP_NODELAY) on `rt`, each
/// driven by a task of its own.
async fn h2_conns(addr: &str, n: usize) -> Result<Conns> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake::<_, Bytes>(tcp)
            .await
            .context("HTTP/2 handshake")?;
        // Ends when the bench drops the connection's `SendRequest`s, or
        // the server closes it (calls on it then fail, and count as
        // errors).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        conns.push(send);
    }
    Ok(Conns::H2 {
        conns,
        authority: addr.parse()?,
    })
}

/// One unary call over bare HTTP/2: `frame` to `path`; the reply's
/// message, or the gRPC status code (as text) it failed with.
async fn h2_unary(
    send: &h2::client::SendRequest<Bytes>,
    authority: &http::uri::Authority,
    path: &'static str,
    frame: Bytes,
) -> std::result::Result<Bytes, String> {
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("uri: {e}"))?;
    let req = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", REQUEST_TIMEOUT_HEADER)
        .body(())
        .map_err(|e| format!("request: {e}"))?;
    let mut send = send
        .clone()
        .ready()
        .await
        .map_err(|_| "Unavailable".to_string())?;
    let (reply, mut body) = send
        .send_request(req, false)
        .map_err(|_| "Unavailable".to_string())?;
    body.send_data(frame, true)
        .map_err(|_| "Unavailable".to_string())?;
    let reply = reply.await.map_err(|_| "Unavailable".to_string())?;
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .map(|v| v.to_str().unwrap_or("?").to_string())
    };
    // A trailers-only reply (an error) carries its status in the headers.
    if let Some(code) = status_of(reply.headers())
        && code != "0"
    {
        return Err(grpc_code(&code));
    }
    let mut body = reply.into_body();
    let mut msg = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| "Unavailable".to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        msg.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|_| "Unavailable".to_string())?;
    match trailers.as_ref().and_then(status_of).as_deref() {
        Some("0") => {}
        Some(code) => return Err(grpc_code(code)),
        None => return Err("no grpc-status".into()),
    }
    if msg.len() < 5 {
        return Err("short reply".into());
    }
    Ok(msg.freeze().slice(5..))
}

/// [`h2_unary`], given up at the request's deadline on this side too (as a
/// tonic client does, and reported the same way: CANCELLED), so a reply
/// stuck behind a backlog counts as an error, not as a latency over it.
async fn h2_unary_within(
    send: &h2::client::SendRequest<Bytes>,
    authority: &http::uri::Authority,
    path: &'static str,
    frame: Bytes,
) -> std::result::Result<Bytes, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, h2_unary(send, authority, path, frame))
        .await
        .unwrap_or_else(|_| Err("Cancelled".into()))
}

/// The name of a gRPC status code, as tonic's `Code` prints it.
fn grpc_code(code: &str) -> String {
    code.parse::<i32>()
        .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
        .unwrap_or_else(|_| format!("status {code:?}"))
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    errors: u64,
    /// Errors by kind (status code, or "wrong" for a reply that failed the
    /// check, "dropped" for sends over the in-flight bound).
    kinds: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
    lateness: Option<Histogram<u64>>,
    /// First send to last reply.
    elapsed: Duration,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One generator's client of one connection.
enum Client {
    Tonic(Box<(HealthClient<Channel>, QueryClient<Channel>)>),
    H2(h2::client::SendRequest<Bytes>, http::uri::Authority),
}

/// Sends request `i` of `call` and checks the reply: Ok, or the kind of
/// failure (status code, or "wrong" for a reply that failed the check).
async fn one_call(
    client: Client,
    call: Call,
    i: u64,
    health_frame: Bytes,
) -> std::result::Result<(), String> {
    let check = |r: pb::GetResponse, hops: u32| {
        let found = matches!(r.outcome, Some(pb::get_response::Outcome::Found(_)));
        if found && r.served.is_some_and(|s| s.hops == hops) {
            Ok(())
        } else {
            Err("wrong".to_string())
        }
    };
    match (client, call) {
        (Client::Tonic(c), Call::Health) => {
            let mut h = c.0;
            let mut r = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            r.set_timeout(REQUEST_TIMEOUT);
            h.check(r)
                .await
                .map(drop)
                .map_err(|e| format!("{:?}", e.code()))
        }
        (Client::Tonic(c), Call::Get { requests, hops, .. }) => {
            let mut q = c.1;
            let k = (mix(i) % requests.len() as u64) as usize;
            let mut r = tonic::Request::new(requests[k].clone());
            r.set_timeout(REQUEST_TIMEOUT);
            match q.get(r).await {
                Ok(r) => check(r.into_inner(), hops),
                Err(e) => Err(format!("{:?}", e.code())),
            }
        }
        (Client::H2(send, authority), Call::Health) => {
            h2_unary_within(&send, &authority, HEALTH_CHECK_PATH, health_frame)
                .await
                .map(drop)
        }
        (Client::H2(send, authority), Call::Get { frames, hops, .. }) => {
            let k = (mix(i) % frames.len() as u64) as usize;
            let reply = h2_unary_within(&send, &authority, GET_PATH, frames[k].clone()).await?;
            let r = pb::GetResponse::decode(reply).map_err(|_| "undecodable".to_string())?;
            check(r, hops)
        }
    }
}

/// Sends `rate` requests per second for `secs` over `conns`, open-loop:
/// this thread paces the sends (a thread sleep, finer than tokio's 1 ms
/// timer, so requests go out one or two at a time rather than in bursts)
/// and spawns each call on `rt`.
fn load(rt: &tokio::runtime::Runtime, conns: &Conns, call: Call, rate: u64, secs: f64) -> Outcome {
    let total = (rate as f64 * secs).round() as u64;
    let latency = Arc::new(Mutex::new(new_hist()));
    let kinds: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let ok = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let last_done = Arc::new(Mutex::new(Instant::now()));
    let mut lateness = new_hist();
    let mut tasks = tokio::task::JoinSet::new();
    let (health, query): (Vec<HealthClient<Channel>>, Vec<QueryClient<Channel>>) = match conns {
        Conns::Tonic(c) => (
            c.iter().cloned().map(HealthClient::new).collect(),
            c.iter().cloned().map(QueryClient::new).collect(),
        ),
        Conns::H2 { .. } => (Vec::new(), Vec::new()),
    };
    let health_frame = grpc_frame(&HealthCheckRequest {
        service: String::new(),
    });
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let now = Instant::now();
        let due = (((now - t0).as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while sent < due {
            let intended = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
            let late = now.saturating_duration_since(intended).as_micros() as u64;
            let _ = lateness.record(late.max(1));
            let i = sent;
            sent += 1;
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                *kinds.lock().unwrap().entry("dropped".into()).or_default() += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let conn = (i as usize) % conns.len();
            let (latency, kinds, ok, in_flight, last_done) = (
                latency.clone(),
                kinds.clone(),
                ok.clone(),
                in_flight.clone(),
                last_done.clone(),
            );
            let call = call.clone();
            let client = match conns {
                Conns::Tonic(_) => {
                    Client::Tonic(Box::new((health[conn].clone(), query[conn].clone())))
                }
                Conns::H2 { conns, authority } => {
                    Client::H2(conns[conn].clone(), authority.clone())
                }
            };
            let health_frame = health_frame.clone();
            tasks.spawn_on(
                async move {
                    let start = Instant::now();
                    let result = one_call(client, call, i, health_frame).await;
                    let done = Instant::now();
                    match result {
                        Ok(()) => {
                            let us = (done - start).as_micros() as u64;
                            let _ = latency.lock().unwrap().record(us.max(1));
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(kind) => *kinds.lock().unwrap().entry(kind).or_default() += 1,
                    }
                    let mut l = last_done.lock().unwrap();
                    if *l < done {
                        *l = done;
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                },
                rt.handle(),
            );
            // Reap finished tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        let next = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    rt.block_on(async { while tasks.join_next().await.is_some() {} });
    let elapsed = last_done.lock().unwrap().saturating_duration_since(t0);
    let kinds = kinds.lock().unwrap().clone();
    let latency = latency.lock().unwrap().clone();
    Outcome {
        ok: ok.load(Ordering::Relaxed),
        errors: kinds.values().sum(),
        kinds,
        latency: Some(latency),
        lateness: Some(lateness),
        elapsed,
    }
}

// ---------------------------------------------------------------- ingest

/// A producer thread pushing records as fast as the broker takes them, at
/// most `MAX_BACKLOG` ahead of what the instances committed.
struct Ingest {
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Ingest {
    fn start(
        bootstrap: String,
        names: Arc<Vec<String>>,
        base: u64,
        backlog: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Ingest {
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicU64::new(0));
        let (st, pr) = (stop.clone(), produced.clone());
        let thread = std::thread::Builder::new()
            .name("bench-ingest".into())
            .spawn(move || -> Result<()> {
                let producer = OutputProducer::new(&KafkaConfig::new(bootstrap), BTreeMap::new())?;
                let mut i = base;
                while !st.load(Ordering::Relaxed) {
                    let done = base + pr.load(Ordering::Relaxed);
                    if done.saturating_sub(backlog()) > MAX_BACKLOG {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    let n = names.len() as u64;
                    let batch = records(
                        &names,
                        (i..i + PRODUCE_BATCH as u64).map(|j| (mix(j) % n) as usize),
                    );
                    producer.produce(&batch)?;
                    i += PRODUCE_BATCH as u64;
                    pr.fetch_add(PRODUCE_BATCH as u64, Ordering::Relaxed);
                }
                Ok(())
            })
            .expect("spawning the ingest thread");
        Ingest {
            stop,
            produced,
            thread,
        }
    }

    fn finish(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the ingest thread panicked"))??;
        Ok(self.produced.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------- report

struct Row {
    name: String,
    engine: &'static str,
    out: Outcome,
    /// Ingest rate (records/s committed) during the case, when ingesting.
    ingest: Option<f64>,
    /// Ingest alone, the mean of the windows just before and after.
    ingest_ref: Option<f64>,
    load_start: String,
    load_end: String,
    /// CPUs busy during the case, on average: this process (engine, server
    /// and load generator), the broker, and everything else on the machine
    /// (other work on this shared machine: a run with much of it is
    /// disturbed).
    cpu: (f64, f64, f64),
    /// CPU µs per answered request in the load generator's threads and in
    /// the two gRPC servers' threads (`strata-grpc`, forwarding included).
    per_request: (f64, f64),
}

fn q_us(h: &Option<Histogram<u64>>, q: f64) -> u64 {
    h.as_ref()
        .filter(|h| !h.is_empty())
        .map_or(0, |h| h.value_at_quantile(q))
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1e3)
}

fn thousands(x: f64) -> String {
    let s = format!("{x:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && c != '-' && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn run_case(
    rt: &tokio::runtime::Runtime,
    conns: &Conns,
    s: &Sizes,
    name: &str,
    engine: &'static str,
    call: Call,
    apps: &[&RunningApp],
) -> Row {
    let load_start = loadavg();
    let (cpu0, broker0, (busy0, all0)) = (self_cpu_secs(), broker_cpu_secs(), machine_jiffies());
    let (gen0, grpc0) = (generator_cpu_secs(), threads_cpu_secs("strata-grpc"));
    let (c0, t0) = (committed(apps), Instant::now());
    let out = load(rt, conns, call, s.rate, s.secs);
    let (gen1, grpc1) = (generator_cpu_secs(), threads_cpu_secs("strata-grpc"));
    let answered = out.ok.max(1) as f64;
    let (c1, t1) = (committed(apps), Instant::now());
    let (cpu1, broker1, (busy1, all1)) = (self_cpu_secs(), broker_cpu_secs(), machine_jiffies());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine = cpus * (busy1 - busy0) as f64 / (all1 - all0).max(1) as f64;
    let wall = (t1 - t0).as_secs_f64();
    let ingest = (engine == "ingesting").then(|| (c1 - c0) as f64 / wall);
    let row = Row {
        name: name.into(),
        engine,
        out,
        ingest,
        ingest_ref: None,
        load_start,
        load_end: loadavg(),
        cpu: (
            (cpu1 - cpu0) / wall,
            (broker1 - broker0) / wall,
            (machine - (cpu1 - cpu0 + broker1 - broker0) / wall).max(0.0),
        ),
        per_request: (
            1e6 * (gen1 - gen0) / answered,
            1e6 * (grpc1 - grpc0) / answered,
        ),
    };
    print_row_line(&row, s);
    row
}

fn print_row_line(r: &Row, s: &Sizes) {
    let o = &r.out;
    println!(
        "  {:<28} {:<9} qps {:>7} p50 {} p99 {} p99.9 {} max {} ms; errors {} {:?}; send lateness p99 {} ms; CPUs busy: bench {:.2}, broker {:.2}, others {:.2}; CPU per request: generator {:.0} µs, servers {:.0} µs; load {} -> {}{}",
        r.name,
        r.engine,
        thousands(o.ok as f64 / o.elapsed.as_secs_f64().max(1e-9)),
        ms(q_us(&o.latency, 0.5)),
        ms(q_us(&o.latency, 0.99)),
        ms(q_us(&o.latency, 0.999)),
        ms(o.latency.as_ref().map_or(0, |h| h.max())),
        o.errors,
        o.kinds,
        ms(q_us(&o.lateness, 0.99)),
        r.cpu.0,
        r.cpu.1,
        r.cpu.2,
        r.per_request.0,
        r.per_request.1,
        r.load_start,
        r.load_end,
        r.ingest
            .map(|x| format!("; ingest {} rec/s", thousands(x)))
            .unwrap_or_default(),
    );
    let _ = s;
}

// ---------------------------------------------------------------- scan

/// Scans the whole table (or one partition) through `conn`, following
/// pages; returns (keys, elapsed).
async fn scan(conn: &Channel, partition: Option<u32>) -> Result<(u64, Duration)> {
    let mut q = QueryClient::new(conn.clone());
    let mut token = Vec::new();
    let mut keys = 0u64;
    let t0 = Instant::now();
    loop {
        let r = q
            .scan(pb::ScanRequest {
                table: TABLE.into(),
                partition,
                page_size: SCAN_PAGE,
                page_token: token,
                ..Default::default()
            })
            .await
            .context("scan")?
            .into_inner();
        if r.partial {
            bail!("scan was partial: {:?}", r.unavailable);
        }
        keys += r.items.len() as u64;
        token = r.next_page_token;
        if token.is_empty() {
            return Ok((keys, t0.elapsed()));
        }
    }
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    let s = parse_sizes()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rdkafka::client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    print_command();
    println!("machine: {}", machine());
    println!(
        "sizes:   {} keys (2 versions each), {} partitions, 2 instances ({} worker(s) at nice +{} / {} gRPC server thread(s) each), load {} req/s for {} s per case over {} connections, generator {:?} on {} thread(s)",
        s.keys,
        PARTITIONS,
        s.workers,
        s.worker_nice,
        s.server_threads,
        s.rate,
        s.secs,
        s.clients,
        s.generator,
        s.gen_threads
    );
    let run_load_start = loadavg();
    println!("load average at start: {run_load_start}");
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("strata-bench-query-")
        .tempdir()
        .context("temp dir")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.gen_threads)
        .thread_name("bench-loadgen")
        .enable_all()
        .build()?;

    let tansu = Tansu::start()?;
    tansu.create_topic(INPUT, PARTITIONS)?;
    let names: Arc<Vec<String>> = Arc::new((0..s.keys).map(key_name).collect());

    // Two instances: A first, B a few seconds later (as the routed query
    // test does), then wait for both directories to agree.
    println!("\n[1/5] starting instances a and b ...");
    let a = instance(&tansu, &s, "a", root.path())?;
    std::thread::sleep(Duration::from_secs(3));
    let b = instance(&tansu, &s, "b", root.path())?;
    let apps = [&a, &b];
    let addr_a = a.grpc_addr().context("a has no gRPC address")?.to_string();
    let addr_b = b.grpc_addr().context("b has no gRPC address")?.to_string();
    let ids: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
    let owners = rt.block_on(settled(&[addr_a.clone(), addr_b.clone()], &ids))?;
    println!(
        "      settled after {:.1} s: {owners:?}",
        started.elapsed().as_secs_f64()
    );

    // Preload: every key once, T, every key again.
    println!("[2/5] preloading {} keys, two versions each ...", s.keys);
    let t_pre = Instant::now();
    let producer = OutputProducer::new(&KafkaConfig::new(tansu.bootstrap()), BTreeMap::new())?;
    // T: after every first version was committed (a commit's time is
    // taken before its stats count), well before any second one.
    let mut as_of = 0;
    for round in 0..2u64 {
        for chunk in (0..s.keys).collect::<Vec<_>>().chunks(PRODUCE_BATCH) {
            producer.produce(&records(&names, chunk.iter().copied()))?;
        }
        wait_committed(&apps, (round + 1) * s.keys as u64, Duration::from_secs(300))?;
        if round == 0 {
            as_of = now_ms() + 50;
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    drop(producer);
    println!(
        "      {} records committed in {:.1} s",
        2 * s.keys,
        t_pre.elapsed().as_secs_f64()
    );

    // Requests: keys of a's partitions (local) and of b's (forwarded).
    let mut local = Vec::new();
    let mut remote = Vec::new();
    for n in names.iter() {
        let p = partition_for(n.as_bytes(), PARTITIONS).0;
        let req = pb::GetRequest {
            table: TABLE.into(),
            key_ref: Some(pb::get_request::KeyRef::Key(n.to_key_bytes())),
            ..Default::default()
        };
        if owners[&p] == "a" {
            local.push(req);
        } else {
            remote.push(req);
        }
    }
    let with_at = |v: &[pb::GetRequest]| -> Vec<pb::GetRequest> {
        v.iter()
            .cloned()
            .map(|mut r| {
                r.at = Some(pb::At {
                    point: Some(pb::at::Point::TimeMs(as_of)),
                });
                r
            })
            .collect()
    };
    let cases: Vec<(&str, Call)> = vec![
        ("baseline: health Check", Call::Health),
        ("Get latest, local", Call::get(local.clone(), 0)),
        ("Get latest, forwarded", Call::get(remote.clone(), 1)),
        ("as-of Get, local", Call::get(with_at(&local), 0)),
        ("as-of Get, forwarded", Call::get(with_at(&remote), 1)),
    ];
    println!(
        "      {} local keys, {} forwarded keys; as-of time {as_of} ms",
        local.len(),
        remote.len()
    );
    let tonic_conns: Vec<Channel> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..s.clients {
            v.push(channel(&addr_a).await?);
        }
        Ok::<_, anyhow::Error>(v)
    })?;
    let conns = match s.generator {
        Generator::Tonic => Conns::Tonic(tonic_conns.clone()),
        Generator::H2 => rt.block_on(h2_conns(&addr_a, s.clients))?,
    };
    // Warm the connections and the forwarding path.
    for (_, call) in &cases {
        load(&rt, &conns, call.clone(), 2_000, 0.25);
    }

    // Scans, idle.
    println!("[3/5] scans (pages of {SCAN_PAGE}) ...");
    let local_p = *owners
        .iter()
        .find(|(_, o)| *o == "a")
        .context("a owns no partition")?
        .0;
    let mut scans = Vec::new();
    for _ in 0..if s.quick { 1 } else { 3 } {
        let all = rt.block_on(scan(&tonic_conns[0], None))?;
        let one = rt.block_on(scan(&tonic_conns[0], Some(local_p)))?;
        if all.0 != s.keys as u64 {
            bail!("a full scan returned {} keys, want {}", all.0, s.keys);
        }
        println!(
            "      all partitions: {} keys in {:.3} s; local partition {local_p}: {} keys in {:.3} s",
            all.0,
            all.1.as_secs_f64(),
            one.0,
            one.1.as_secs_f64()
        );
        scans.push((all, one));
    }

    // Idle.
    // Let the preload's flushes and the scans' work finish, then warm every
    // path at the full rate.
    std::thread::sleep(Duration::from_secs(if s.quick { 1 } else { 2 }));
    for (_, call) in &cases {
        load(
            &rt,
            &conns,
            call.clone(),
            s.rate,
            if s.quick { 0.2 } else { 0.5 },
        );
    }
    println!("[4/5] queries, engine idle ...");
    let mut rows = Vec::new();
    for (name, call) in &cases {
        rows.push(run_case(&rt, &conns, &s, name, "idle", call.clone(), &apps));
    }

    // Ingesting.
    println!("[5/5] queries while ingesting at full speed ...");
    let base = 2 * s.keys as u64;
    let backlog: Arc<dyn Fn() -> u64 + Send + Sync> = {
        let (ra, rb) = (a.registry().clone(), b.registry().clone());
        Arc::new(move || {
            [&ra, &rb]
                .iter()
                .flat_map(|r| r.task_stats().into_values())
                .map(|t| t.records_in)
                .sum::<u64>()
        })
    };
    let ingest = Ingest::start(tansu.bootstrap(), names.clone(), base, backlog);
    std::thread::sleep(if s.quick {
        INGEST_WARMUP / 3
    } else {
        INGEST_WARMUP
    });
    let mut alone = Vec::new();
    let measure_alone = |label: &str| -> f64 {
        let l0 = loadavg();
        let (c0, t0) = (committed(&apps), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(s.secs));
        let x = (committed(&apps) - c0) as f64 / t0.elapsed().as_secs_f64();
        println!(
            "  ingest alone ({label}): {} rec/s committed; load {l0} -> {}",
            thousands(x),
            loadavg()
        );
        x
    };
    // Ingest alone before every case and after the last: each case is
    // compared with the mean of the windows either side of it, so a drift
    // in the ingest rate (the table growing, compactions) is not charged
    // to the queries.
    alone.push(measure_alone("before the first case"));
    for (name, call) in &cases {
        let mut row = run_case(&rt, &conns, &s, name, "ingesting", call.clone(), &apps);
        alone.push(measure_alone(&format!("after {name}")));
        let n = alone.len();
        row.ingest_ref = Some((alone[n - 2] + alone[n - 1]) / 2.0);
        rows.push(row);
    }
    let produced = ingest.finish()?;
    println!("  ingest: {produced} records produced");
    let ingest_alone = alone.iter().sum::<f64>() / alone.len() as f64;

    // The table.
    let base_idle = &rows[0];
    let base_ing = &rows[cases.len()];
    println!(
        "\n| case | engine | QPS | p50 ms | p99 ms | p99.9 ms | max ms | errors | p50 / baseline | p99 / baseline | ingest rec/s (vs alone either side) | aim p99 | met | CPU µs/request: generator / servers | CPUs: bench / broker / others |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|");
    for r in &rows {
        let base = if r.engine == "idle" {
            base_idle
        } else {
            base_ing
        };
        let o = &r.out;
        let (p50, p99) = (q_us(&o.latency, 0.5), q_us(&o.latency, 0.99));
        let (b50, b99) = (q_us(&base.out.latency, 0.5), q_us(&base.out.latency, 0.99));
        let aim = if r.name.contains("forwarded") {
            Some(2_000)
        } else if r.name.contains("local") {
            Some(1_000)
        } else {
            None
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} / {:.0} | {:.2} / {:.2} / {:.2} |",
            r.name,
            r.engine,
            thousands(o.ok as f64 / o.elapsed.as_secs_f64().max(1e-9)),
            ms(p50),
            ms(p99),
            ms(q_us(&o.latency, 0.999)),
            ms(o.latency.as_ref().map_or(0, |h| h.max())),
            o.errors,
            if std::ptr::eq(r, base) {
                "1".into()
            } else {
                format!("{:.2}x", p50 as f64 / b50.max(1) as f64)
            },
            if std::ptr::eq(r, base) {
                "1".into()
            } else {
                format!("{:.2}x", p99 as f64 / b99.max(1) as f64)
            },
            r.ingest
                .map(|x| format!(
                    "{} ({:.0}%)",
                    thousands(x),
                    100.0 * x / r.ingest_ref.unwrap_or(ingest_alone).max(1.0)
                ))
                .unwrap_or_default(),
            aim.map(|a| format!("< {} ms", a / 1000))
                .unwrap_or_default(),
            match aim {
                Some(a) if o.errors == 0 && p99 < a => "yes",
                Some(_) => "**no**",
                None => "",
            },
            r.per_request.0,
            r.per_request.1,
            r.cpu.0,
            r.cpu.1,
            r.cpu.2
        );
    }
    println!(
        "\ningest alone: {} rec/s committed (mean of the windows: {})",
        thousands(ingest_alone),
        alone
            .iter()
            .map(|x| thousands(*x))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rate = |(n, d): (u64, Duration)| n as f64 / d.as_secs_f64().max(1e-9);
    let best_all = scans.iter().map(|x| rate(x.0)).fold(0.0, f64::max);
    let best_one = scans.iter().map(|x| rate(x.1)).fold(0.0, f64::max);
    println!(
        "scan, all {PARTITIONS} partitions from a (scatter-gather, pages of {SCAN_PAGE}): {} keys/s (best of {}); one local partition: {} keys/s; ratio {:.2}",
        thousands(best_all),
        scans.len(),
        thousands(best_one),
        best_all / best_one.max(1e-9)
    );
    println!(
        "load average at start {run_load_start}, at end {}; {:.0} s in all",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    if s.quick {
        println!("(--quick: short cases, small table; the numbers mean little)");
    }
    drop(conns);
    drop(tonic_conns);
    b.shutdown()?;
    a.shutdown()?;
    Ok(())
}
