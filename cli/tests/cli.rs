//! The `strata` binary end to end: against a real app serving gRPC on the
//! embedded cluster (every command, JSON and table output, the error exit
//! codes), and, for `tail`, against an in-process fake Query server that
//! streams canned change-feed messages.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata::{App, AppConfig, EmbeddedKafka, RunningApp};
use strata_proto::v1 as pb;
use strata_test_support::grpc::{now_ms, sums_topology};
use strata_test_support::produce::produce_numbers;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

const KEYS: usize = 12;
const PARTITIONS: u32 = 3;

fn key(i: usize) -> String {
    format!("k{i:02}")
}

/// Runs the binary against `endpoint` and waits for it.
fn strata(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("STRATA_ENDPOINT")
        .env_remove("STRATA_TOKEN")
        .output()
        .expect("run strata")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(endpoint: &str, args: &[&str]) -> String {
    let o = strata(endpoint, args);
    assert!(
        o.status.success(),
        "strata {args:?} failed ({:?}): {}",
        o.status.code(),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs a command with `-o json` and parses each stdout line.
fn json_docs(endpoint: &str, args: &[&str]) -> Vec<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    ok(endpoint, &a)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn json_one(endpoint: &str, args: &[&str]) -> Value {
    let docs = json_docs(endpoint, args);
    assert_eq!(docs.len(), 1, "one document: {docs:?}");
    docs.into_iter().next().unwrap()
}

/// Runs a command that must fail; returns (exit code, stderr).
fn fails(endpoint: &str, args: &[&str]) -> (i32, String) {
    let o = strata(endpoint, args);
    assert!(
        !o.status.success(),
        "strata {args:?} should fail: {}",
        stdout(&o)
    );
    (o.status.code().expect("an exit code"), stderr(&o))
}

/// Every key and value a scan prints, across its pages.
fn scan_all(endpoint: &str, args: &[&str]) -> (Vec<(String, i64)>, usize) {
    let docs = json_docs(endpoint, args);
    let mut items = Vec::new();
    for d in &docs {
        assert_eq!(d["partial"], false, "{d}");
        for it in d["items"].as_array().unwrap() {
            items.push((
                it["key"].as_str().unwrap().to_string(),
                it["entry"]["value"].as_i64().unwrap(),
            ));
        }
    }
    (items, docs.len())
}

struct Fixture {
    kafka: EmbeddedKafka,
    _state: tempfile::TempDir,
    app: Option<RunningApp>,
    endpoint: String,
    /// Before the first record.
    t_start: u64,
    /// After phase 1 converged, before phase 2.
    t_mid: u64,
    phase1: BTreeMap<String, i64>,
    phase2: BTreeMap<String, i64>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            let _ = app.shutdown();
        }
    }
}

/// Polls (through the CLI) until `sums` holds exactly `want`.
fn wait_table(endpoint: &str, want: &BTreeMap<String, i64>) {
    let want: Vec<(String, i64)> = want.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let o = strata(endpoint, &["scan", "sums", "-o", "json"]);
        if o.status.success() {
            let items: Vec<(String, i64)> = stdout(&o)
                .lines()
                .flat_map(|l| {
                    let d: Value = serde_json::from_str(l).unwrap();
                    d["items"].as_array().cloned().unwrap_or_default()
                })
                .map(|it| {
                    (
                        it["key"].as_str().unwrap().to_string(),
                        it["entry"]["value"].as_i64().unwrap(),
                    )
                })
                .collect();
            if items == want {
                return;
            }
        }
        assert!(Instant::now() < end, "sums did not reach {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An app computing `sums` over `events`; phase 1 is three rounds of +1, +2,
/// +3 on every key (separate commits), phase 2 +10 on k00..k03.
fn fixture() -> Fixture {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", PARTITIONS).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = AppConfig::new("cli", kafka.bootstrap_servers());
    cfg.state_dir = state.path().to_path_buf();
    cfg.kafka.session_timeout = Duration::from_secs(6);
    cfg.manage_topics = false;
    cfg.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    kafka
        .create_app_topics(&cfg, &sums_topology(), PARTITIONS)
        .unwrap();
    let app = App::new(cfg).unwrap().start(sums_topology()).unwrap();
    app.wait_running(PARTITIONS as usize, Duration::from_secs(60))
        .unwrap();
    let endpoint = format!("http://{}", app.grpc_addr().expect("a gRPC server"));
    let t_start = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    let mut phase1 = BTreeMap::new();
    for round in 1..=3i64 {
        let recs: Vec<(String, i64)> = (0..KEYS).map(|i| (key(i), round)).collect();
        produce_numbers(&kafka.bootstrap_servers(), &recs);
        for (k, v) in recs {
            *phase1.entry(k).or_insert(0) += v;
        }
        wait_table(&endpoint, &phase1);
    }
    std::thread::sleep(Duration::from_millis(20));
    let t_mid = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    let recs: Vec<(String, i64)> = (0..4).map(|i| (key(i), 10)).collect();
    produce_numbers(&kafka.bootstrap_servers(), &recs);
    let mut phase2 = phase1.clone();
    for (k, v) in recs {
        *phase2.get_mut(&k).unwrap() += v;
    }
    wait_table(&endpoint, &phase2);
    Fixture {
        kafka,
        _state: state,
        app: Some(app),
        endpoint,
        t_start,
        t_mid,
        phase1,
        phase2,
    }
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn every_command_against_a_running_app() {
    let f = fixture();
    let ep = f.endpoint.as_str();

    // tables / describe.
    let t = json_one(ep, &["tables"]);
    assert_eq!(t["tables"][0]["name"], "sums", "{t}");
    assert_eq!(t["tables"][0]["partitions"], PARTITIONS);
    assert_eq!(t["tables"][0]["input_topics"], json!(["events"]));
    let human = ok(ep, &["tables"]);
    assert!(human.starts_with("TABLE"), "{human}");
    assert!(
        human.lines().nth(1).unwrap().starts_with("sums "),
        "{human}"
    );
    let d = json_one(ep, &["describe", "sums"]);
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), PARTITIONS as usize);
    assert!(
        parts.iter().all(|p| p["state"] == json!({"running": {}})),
        "{d}"
    );
    let versions: u64 = parts
        .iter()
        .map(|p| p["latest_version"].as_u64().unwrap())
        .sum();
    assert_eq!(
        versions,
        (3 * KEYS + 4) as u64,
        "one version per record: {d}"
    );
    assert!(ok(ep, &["describe", "sums"]).contains("running"));

    // get: latest, in both forms of key.
    let g = json_one(ep, &["get", "sums", r#""k00""#]);
    assert_eq!(g["key"], "k00");
    assert_eq!(g["found"], true);
    assert_eq!(g["entry"]["value"], f.phase2["k00"]);
    assert_eq!(g["entry"]["lineage"]["topic"], "events");
    assert_eq!(g["served"]["instance"]["endpoint"], ep);
    assert_eq!(
        json_one(ep, &["get", "sums", "k00"]),
        g,
        "a bare word is a JSON string"
    );
    let human = ok(ep, &["get", "sums", "k00"]);
    let row = human.lines().nth(1).unwrap();
    assert!(
        row.starts_with(r#""k00""#) && row.ends_with(" 16"),
        "{human}"
    );
    assert!(
        row.contains(&g["entry"]["time"].as_str().unwrap()[..19]),
        "{human}"
    );
    // A key never written is absent, not an error.
    let g = json_one(ep, &["get", "sums", "nope"]);
    assert_eq!(
        (g["found"].clone(), g["entry"].clone()),
        (json!(false), Value::Null)
    );

    // history: newest first, then ascending with a limit.
    let h = json_one(ep, &["history", "sums", "k00"]);
    let vals: Vec<i64> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_i64().unwrap())
        .collect();
    assert_eq!(vals, vec![16, 6, 3, 1]);
    let asc = json_one(ep, &["history", "sums", "k00", "--asc", "--limit", "3"]);
    let entries = asc["entries"].as_array().unwrap();
    let vals: Vec<i64> = entries
        .iter()
        .map(|e| e["value"].as_i64().unwrap())
        .collect();
    assert_eq!(vals, vec![1, 3, 6]);
    assert_eq!(asc["more"], true);
    let v2 = entries[1]["version"].as_u64().unwrap();
    let human = ok(ep, &["history", "sums", "k00", "--limit", "2"]);
    assert_eq!(
        human.lines().count(),
        3,
        "a header and two versions: {human}"
    );

    // get at a version and as of a time (epoch ms, RFC 3339 and relative).
    let g = json_one(ep, &["get", "sums", "k00", "--at-version", &v2.to_string()]);
    assert_eq!(g["entry"]["value"], 3);
    assert_eq!(g["served"]["read_version"], v2);
    let mid = f.t_mid.to_string();
    for when in [mid.clone(), rfc3339(f.t_mid)] {
        let g = json_one(ep, &["get", "sums", "k00", "--as-of", &when]);
        assert_eq!(g["entry"]["value"], f.phase1["k00"], "as of {when}");
    }
    let g = json_one(ep, &["get", "sums", "k11", "--as-of", "-1h"]);
    assert_eq!(g["found"], false, "nothing an hour ago: {g}");

    // scan: every key exactly once across partitions and pages.
    let (items, pages) = scan_all(ep, &["scan", "sums", "--page-size", "5"]);
    let want: Vec<(String, i64)> = f.phase2.iter().map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(items, want);
    assert!(pages >= KEYS / 5, "followed the pages ({pages})");
    let human = ok(ep, &["scan", "sums", "--page-size", "5"]);
    assert_eq!(human.lines().count(), KEYS + 1, "{human}");
    assert!(
        human
            .lines()
            .all(|l| !l.starts_with("KEY") || l == human.lines().next().unwrap())
    );
    let (items, _) = scan_all(ep, &["scan", "sums", "--prefix", "k0", "--as-of", &mid]);
    let want: Vec<(String, i64)> = f
        .phase1
        .iter()
        .filter(|(k, _)| k.starts_with("k0"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(items, want);
    let (items, _) = scan_all(
        ep,
        &[
            "scan", "sums", "--from", "k03", "--to", "k06", "--limit", "2",
        ],
    );
    assert_eq!(
        items,
        vec![
            ("k03".into(), f.phase2["k03"]),
            ("k04".into(), f.phase2["k04"])
        ]
    );

    // diff from the middle: phase 2's keys, with both values.
    let docs = json_docs(ep, &["diff", "sums", "--from", &format!("@{mid}")]);
    let entries: Vec<&Value> = docs
        .iter()
        .flat_map(|d| d["entries"].as_array().unwrap())
        .collect();
    let got: Vec<(String, i64, i64)> = entries
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                e["before"]["value"].as_i64().unwrap(),
                e["after"]["value"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, i64, i64)> = (0..4)
        .map(|i| (key(i), f.phase1[&key(i)], f.phase2[&key(i)]))
        .collect();
    assert_eq!(got, want);
    let human = ok(
        ep,
        &[
            "diff",
            "sums",
            "--from",
            &rfc3339(f.t_mid),
            "--prefix",
            "k02",
        ],
    );
    assert!(
        human.lines().nth(1).unwrap().contains("changed") && human.lines().count() == 2,
        "{human}"
    );

    // rewind k02 to the middle: a dry run changes nothing.
    let rw = ["rewind", "sums", "--key", "k02", "--to-time", &mid];
    let mut dry = rw.to_vec();
    dry.push("--dry-run");
    let plan = json_one(ep, &dry);
    assert_eq!(plan["dry_run"], true);
    let p = &plan["partitions"][0];
    assert_eq!(p["status"], "planned");
    assert_eq!(p["change_count"], 1);
    assert_eq!(p["changes"][0]["key"], "k02");
    assert_eq!(p["changes"][0]["current"]["value"], f.phase2["k02"]);
    assert_eq!(p["changes"][0]["restored"]["value"], f.phase1["k02"]);
    assert_eq!(
        json_one(ep, &["get", "sums", "k02"])["entry"]["value"],
        f.phase2["k02"]
    );
    let human = ok(ep, &dry);
    assert!(
        human.contains("planned") && human.contains("RESTORED"),
        "{human}"
    );
    // Without --yes and without a terminal it refuses.
    let (c, e) = fails(ep, &rw);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("--yes"), "{e}");
    // A stale expectation is refused, and nothing changes.
    let (part, from) = (
        p["partition"].as_u64().unwrap(),
        p["from_version"].as_u64().unwrap(),
    );
    let stale = format!("{part}:{}", from - 1);
    let mut apply = rw.to_vec();
    apply.extend(["--yes", "--expect-latest", &stale]);
    let (c, e) = fails(ep, &apply);
    assert_eq!(c, 7, "{e}");
    assert!(e.contains("error: FAILED_PRECONDITION"), "{e}");
    let expect = format!("{part}:{from}");
    let mut apply = rw.to_vec();
    apply.extend(["--yes", "--expect-latest", &expect]);
    let done = json_one(ep, &apply);
    let p = &done["partitions"][0];
    assert_eq!(p["status"], "applied", "{done}");
    assert_eq!(p["new_versions"]["first"], from + 1);
    // The rewind is history, flagged.
    let h = json_one(ep, &["history", "sums", "k02", "--limit", "1"]);
    let e = &h["entries"][0];
    assert_eq!(e["value"], f.phase1["k02"]);
    assert_eq!(e["flags"]["rewind"], true);
    assert_eq!(e["lineage"], Value::Null);
    let human = ok(ep, &["history", "sums", "k02", "--limit", "1"]);
    assert!(human.lines().nth(1).unwrap().contains("rewind"), "{human}");

    // Errors: exit codes and messages.
    let (c, e) = fails(ep, &["get", "nope", "k00"]);
    assert_eq!(c, 3, "{e}");
    assert!(
        e.starts_with("error: NOT_FOUND: ") && e.contains("strata tables"),
        "{e}"
    );
    let (c, e) = fails(ep, &["get", "sums", r#"{"a":1}"#]);
    assert_eq!(c, 4, "{e}");
    assert!(e.starts_with("error: INVALID_ARGUMENT: "), "{e}");
    let (c, e) = fails(ep, &["get", "sums", "{bad"]);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("not valid JSON"), "{e}");
    let (c, e) = fails(ep, &["get", "sums", "k00", "--at-version", "999999"]);
    assert_eq!(c, 4, "{e}");
    assert!(e.contains("hint: the partition's latest version is"), "{e}");
    let (c, e) = fails(ep, &["get", "sums", "k00", "--as-of", "yesterday"]);
    assert_eq!(c, 2, "{e}");
}

#[test]
fn rewind_with_replay_shows_the_seek_offsets_and_cancel_reports_each_partition() {
    let f = fixture();
    let ep = &f.endpoint;
    let mid = f.t_mid.to_string();
    let rw = ["rewind", "sums", "--to-time", &mid, "--replay"];
    // A dry run: every partition planned, sought back over phase 2 only.
    let mut dry = rw.to_vec();
    dry.push("--dry-run");
    let plan = json_one(ep, &dry);
    let parts = plan["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), PARTITIONS as usize, "{plan}");
    let mut behind = 0;
    for p in parts {
        assert_eq!(p["status"], "planned", "{p}");
        let r = &p["replay"];
        assert_eq!(r["state"], "planned", "{p}");
        assert_eq!(r["seek"][0]["topic"], "events");
        behind +=
            r["until"][0]["offset"].as_u64().unwrap() - r["seek"][0]["offset"].as_u64().unwrap();
    }
    assert_eq!(behind, 4, "phase 2 is 4 records: {plan}");
    let human = ok(ep, &dry);
    assert!(
        human.contains("SEEK") && human.contains("events@"),
        "{human}"
    );
    // A replay reprocesses whole partitions: no key filter.
    let (c, e) = fails(
        ep,
        &[
            "rewind",
            "sums",
            "--to-time",
            &mid,
            "--replay",
            "--key",
            "k01",
            "--yes",
        ],
    );
    assert_eq!(c, 2, "{e}");
    // Apply: the same code recomputes phase 2.
    let mut apply = rw.to_vec();
    apply.push("--yes");
    let done = json_one(ep, &apply);
    for p in done["partitions"].as_array().unwrap() {
        assert_eq!(p["status"], "applied", "{p}");
        assert!(p["replay"]["seek"][0]["offset"].is_u64(), "{p}");
    }
    wait_table(ep, &f.phase2);
    // `describe` shows each partition's last replay.
    let d = json_one(ep, &["describe", "sums"]);
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(p["replay"]["table"], "sums", "{p}");
        assert!(
            ["running", "done"].contains(&p["replay"]["state"].as_str().unwrap()),
            "{p}"
        );
    }
    assert!(ok(ep, &["describe", "sums"]).contains("REPLAY"));
    // Cancel every partition: each reports what it stopped, or nothing.
    let c = json_one(ep, &["rewind", "sums", "--cancel"]);
    assert_eq!(
        c["partitions"].as_array().unwrap().len(),
        PARTITIONS as usize,
        "{c}"
    );
    let human = ok(ep, &["rewind", "sums", "--cancel"]);
    assert!(
        human.contains("REPLAY") && human.contains("not replaying"),
        "{human}"
    );
    let (c, e) = fails(ep, &["rewind", "sums", "--cancel", "--partition", "0"]);
    assert_eq!(c, 7, "{e}");
    assert!(
        e.contains("FAILED_PRECONDITION") && e.contains("not replaying"),
        "{e}"
    );
}

#[test]
fn an_unreachable_endpoint_says_where_and_what_to_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = format!("http://127.0.0.1:{port}");
    let (c, e) = fails(&ep, &["tables"]);
    assert_eq!(c, 5, "{e}");
    assert!(
        e.starts_with(&format!("error: UNAVAILABLE: cannot connect to {ep}")),
        "{e}"
    );
    assert!(e.contains("hint:") && e.contains("--endpoint"), "{e}");
    let (c, e) = fails("not a url", &["tables"]);
    assert_eq!(c, 2, "{e}");
    let (c, e) = fails(&ep, &["--ca-cert", "/nonexistent.pem", "tables"]);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("--ca-cert needs an https:// endpoint"), "{e}");
}

// ---- tail, against a fake Query server -------------------------------

type Feed = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// How the fake feed ends after its canned messages.
#[derive(Clone, Copy)]
enum End {
    Error,
    Close,
    StayOpen,
}

struct FakeQuery {
    messages: Vec<pb::SubscribeResponse>,
    end: End,
    requests: Arc<Mutex<Vec<pb::SubscribeRequest>>>,
    auth: Arc<Mutex<Vec<Option<String>>>>,
}

#[tonic::async_trait]
impl pb::query_server::Query for FakeQuery {
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn history(
        &self,
        _: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn scan(
        &self,
        _: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn diff(
        &self,
        _: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type SubscribeStream = Feed;
    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Feed>, Status> {
        use tokio_stream::StreamExt;
        let auth = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        self.auth.lock().unwrap().push(auth);
        self.requests.lock().unwrap().push(req.into_inner());
        let canned = tokio_stream::iter(self.messages.clone().into_iter().map(Ok));
        let feed: Feed = match self.end {
            End::Error => Box::pin(canned.chain(tokio_stream::once(Err(Status::unavailable(
                "partition 1 moved to another instance",
            ))))),
            End::Close => Box::pin(canned),
            End::StayOpen => Box::pin(canned.chain(tokio_stream::pending())),
        };
        Ok(Response::new(feed))
    }
    async fn list_tables(
        &self,
        _: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn describe_table(
        &self,
        _: Request<pb::DescribeTableRequest>,
    ) -> Result<Response<pb::DescribeTableResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

fn cursor(pvs: &[(u32, u64)]) -> Option<pb::Cursor> {
    Some(pb::Cursor {
        positions: pvs
            .iter()
            .map(|&(partition, version)| pb::PartitionVersion { partition, version })
            .collect(),
    })
}

fn change(partition: u32, version: u64, key: &str, value: Option<i64>) -> pb::Change {
    pb::Change {
        partition,
        key: key.as_bytes().to_vec(),
        key_json: serde_json::to_string(key).unwrap(),
        entry: Some(pb::Entry {
            version,
            time_ms: 1_714_564_800_000 + version,
            deleted: value.is_none(),
            value_json: value.map(|v| v.to_string()).unwrap_or_default(),
            ..Default::default()
        }),
    }
}

/// Two messages with changes, then a heartbeat that moves partition 1 on.
fn canned() -> Vec<pb::SubscribeResponse> {
    vec![
        pb::SubscribeResponse {
            changes: vec![change(0, 5, "alice", Some(7)), change(1, 3, "bob", None)],
            resume: cursor(&[(0, 5), (1, 3)]),
            caught_up: false,
        },
        pb::SubscribeResponse {
            changes: vec![change(0, 6, "alice", Some(9))],
            resume: cursor(&[(0, 6), (1, 3)]),
            caught_up: true,
        },
        pb::SubscribeResponse {
            changes: vec![],
            resume: cursor(&[(0, 6), (1, 4)]),
            caught_up: true,
        },
    ]
}

struct FakeServer {
    endpoint: String,
    requests: Arc<Mutex<Vec<pb::SubscribeRequest>>>,
    /// The `authorization` header of each request.
    auth: Arc<Mutex<Vec<Option<String>>>>,
    /// The server task; it ends with the runtime, when the test drops it.
    _server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    _rt: tokio::runtime::Runtime,
}

fn fake_server(end: End) -> FakeServer {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let svc = pb::query_server::QueryServer::new(FakeQuery {
        messages: canned(),
        end,
        requests: requests.clone(),
        auth: auth.clone(),
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = rt.spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    FakeServer {
        endpoint: format!("http://{addr}"),
        requests,
        auth,
        _server: server,
        _rt: rt,
    }
}

const LAST_CURSOR: &str = r#"[{"partition":0,"version":6},{"partition":1,"version":4}]"#;

#[test]
fn tail_prints_changes_and_the_cursor_to_resume_from_when_the_stream_breaks() {
    let s = fake_server(End::Error);
    let o = strata(&s.endpoint, &["tail", "sums"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three changes: {out}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].ends_with("VALUE"),
        "{out}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cols,
        ["2024-05-01T12:00:00.005Z", "0", "5", r#""alice""#, "-", "7"]
    );
    assert!(
        lines[2].contains(r#""bob""#) && lines[2].contains("deleted"),
        "{out}"
    );
    assert!(lines[3].ends_with(" 9"), "{out}");
    // Columns are aligned: the VALUE column starts at the same place.
    let at = |l: &str, s: &str| l.find(s).unwrap();
    assert_eq!(at(lines[0], "KEY"), at(lines[1], "\"alice\""));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("last cursor: {LAST_CURSOR}")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "resume with: strata tail sums --after '{LAST_CURSOR}'"
        )),
        "{err}"
    );
    assert!(
        err.contains("error: UNAVAILABLE: partition 1 moved to another instance"),
        "{err}"
    );
    let req = s.requests.lock().unwrap()[0].clone();
    assert_eq!(req.table, "sums");
    assert!(
        req.start.is_none() && req.keys.is_none(),
        "starts now: {req:?}"
    );
}

#[test]
fn tail_resumes_from_a_cursor_and_prints_json_per_message() {
    let s = fake_server(End::Close);
    let o = strata(
        &s.endpoint,
        &[
            "tail",
            "sums",
            "--after",
            r#"[{"partition":0,"version":4}]"#,
            "--key",
            "alice",
            "--partition",
            "0",
            "-o",
            "json",
            "--token",
            "s3cret",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(5),
        "a closed feed is a break: {}",
        stderr(&o)
    );
    let docs: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        docs.len(),
        3,
        "one document per message, heartbeat included"
    );
    assert_eq!(docs[0]["changes"][0]["key"], "alice");
    assert_eq!(docs[0]["changes"][0]["entry"]["value"], 7);
    assert_eq!(docs[0]["changes"][0]["entry"]["version"], 5);
    assert_eq!(docs[0]["changes"][1]["entry"]["deleted"], true);
    assert_eq!(docs[0]["caught_up"], false);
    assert_eq!(docs[2]["changes"], json!([]));
    assert_eq!(docs[2]["resume"].to_string(), LAST_CURSOR);
    // What the server was asked: the cursor, the key and the partition.
    let req = s.requests.lock().unwrap()[0].clone();
    assert_eq!(
        req.start,
        Some(pb::subscribe_request::Start::After(
            cursor(&[(0, 4)]).unwrap()
        ))
    );
    assert_eq!(
        req.keys.unwrap().filter,
        Some(pb::key_filter::Filter::KeyJson(r#""alice""#.into()))
    );
    assert_eq!(req.partition, Some(0));
    assert_eq!(s.auth.lock().unwrap()[0].as_deref(), Some("Bearer s3cret"));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "resume with: strata tail sums --after '{LAST_CURSOR}' --key '\"alice\"' --partition 0"
        )),
        "{err}"
    );
}

/// Starts `strata tail` with its stdout piped.
fn spawn_tail(endpoint: &str, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--endpoint")
        .arg(endpoint)
        .arg("tail")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Reads the next line of a running `tail`.
fn next_line(out: &mut BufReader<ChildStdout>) -> String {
    let mut l = String::new();
    assert!(out.read_line(&mut l).unwrap() > 0, "tail ended early");
    l.trim_end().to_string()
}

fn interrupt(child: &Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT");
}

#[test]
fn ctrl_c_stops_tail_with_exit_0_and_the_cursor() {
    let s = fake_server(End::StayOpen);
    let (child, mut out) = spawn_tail(&s.endpoint, &["sums", "-o", "json"]);
    let lines: Vec<String> = (0..3).map(|_| next_line(&mut out)).collect();
    let last: Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(last["resume"].to_string(), LAST_CURSOR);
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("last cursor: {LAST_CURSOR}")),
        "{}",
        stderr(&o)
    );
}

/// Reads `tail -o json` documents until `n` changes have come; returns the
/// changes as (partition, version, key, value) and the last cursor.
fn read_changes(
    out: &mut BufReader<ChildStdout>,
    n: usize,
) -> (Vec<(u32, u64, String, i64)>, Value) {
    let mut changes = Vec::new();
    let mut resume = Value::Null;
    while changes.len() < n {
        let d: Value = serde_json::from_str(&next_line(out)).unwrap();
        for c in d["changes"].as_array().unwrap() {
            changes.push((
                c["partition"].as_u64().unwrap() as u32,
                c["entry"]["version"].as_u64().unwrap(),
                c["key"].as_str().unwrap().to_string(),
                c["entry"]["value"].as_i64().unwrap(),
            ));
        }
        resume = d["resume"].clone();
    }
    (changes, resume)
}

#[test]
fn tail_follows_a_running_app_and_resumes_from_its_cursor() {
    let f = fixture();
    // From before the first record: every change of the fixture exactly
    // once, in version order within each partition, with the right values.
    let backlog = 3 * KEYS + 4;
    let (child, mut out) = spawn_tail(
        &f.endpoint,
        &["sums", "--from-time", &f.t_start.to_string(), "-o", "json"],
    );
    let (changes, _) = read_changes(&mut out, backlog);
    assert_eq!(changes.len(), backlog, "no more than the backlog");
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (p, v, k, val) in &changes {
        by_partition.entry(*p).or_default().push(*v);
        last.insert(k.clone(), *val);
    }
    for vs in by_partition.values() {
        assert!(
            vs.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, no gaps: {vs:?}"
        );
    }
    assert_eq!(last, f.phase2);
    // A change committed now arrives live.
    produce_numbers(&f.kafka.bootstrap_servers(), &[(key(11), 100)]);
    let (live, resume) = read_changes(&mut out, 1);
    assert_eq!(
        (live[0].2.as_str(), live[0].3),
        ("k11", f.phase2["k11"] + 100)
    );
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("last cursor: {resume}")),
        "{}",
        stderr(&o)
    );
    // Resuming from that cursor skips everything already seen.
    let (child, mut out) = spawn_tail(
        &f.endpoint,
        &["sums", "--after", &resume.to_string(), "-o", "json"],
    );
    produce_numbers(&f.kafka.bootstrap_servers(), &[(key(3), 1)]);
    let (next, _) = read_changes(&mut out, 1);
    assert_eq!(
        (next[0].2.as_str(), next[0].3),
        ("k03", f.phase2["k03"] + 1)
    );
    interrupt(&child);
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));
}
