//! The gRPC query and admin services on the embedded cluster: every RPC
//! served from this instance's partitions, through the generated tonic
//! client, and the error contract case by case (including malformed and
//! oversized protobuf), plus health and reflection.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::Message;
use strata::serde::{Utf8, json};
use strata::{App, EmbeddedKafka, RunningApp, TableOptions, Topology};
use strata_proto::v1 as pb;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::query_client::QueryClient;
use strata_state::Retention;
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};
use strata_test_support::grpc::{assert_serving, config, list_services, now_ms};
use strata_test_support::produce::produce_numbers;
use tonic::Code;
use tonic::transport::Channel;

const KEYS: usize = 30;
const PARTITIONS: u32 = 3;

/// `sums`: per-key sum of the values; `last`: the last value, keeping one
/// version per key.
fn topology() -> Topology {
    let t = Topology::new();
    let s = t.stream("events", Utf8, json::<i64>());
    s.aggregate(
        "sums",
        TableOptions::default(),
        |_k, v: i64, old: Option<i64>| Some(old.unwrap_or(0) + v),
    );
    let one = TableOptions {
        retention: Retention::last_versions(1).unwrap(),
        ..Default::default()
    };
    s.aggregate("last", one, |_k, v: i64, _old: Option<i64>| Some(v));
    t
}

fn key(i: usize) -> String {
    format!("k{i:02}")
}

async fn clients(addr: SocketAddr) -> (QueryClient<Channel>, AdminClient<Channel>, Channel) {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        QueryClient::new(ch.clone()),
        AdminClient::new(ch.clone()),
        ch,
    )
}

fn get_json(table: &str, k: &str) -> pb::GetRequest {
    pb::GetRequest {
        table: table.into(),
        key_ref: Some(pb::get_request::KeyRef::KeyJson(
            serde_json::to_string(k).unwrap(),
        )),
        ..Default::default()
    }
}

fn at_time(t: u64) -> Option<pb::At> {
    Some(pb::At {
        point: Some(pb::at::Point::TimeMs(t)),
    })
}

fn at_version(v: u64) -> Option<pb::At> {
    Some(pb::At {
        point: Some(pb::at::Point::Version(v)),
    })
}

fn found(r: &pb::GetResponse) -> Option<&pb::Entry> {
    match r.outcome.as_ref().unwrap() {
        pb::get_response::Outcome::Found(e) => Some(e),
        pb::get_response::Outcome::Absent(_) => None,
    }
}

fn value_of(r: &pb::GetResponse) -> Option<i64> {
    found(r).map(|e| serde_json::from_str(&e.value_json).unwrap())
}

/// Polls until `sums` holds `want` for every key, through gRPC.
async fn wait_sums(q: &mut QueryClient<Channel>, want: &BTreeMap<String, i64>) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ok = true;
        for (k, v) in want {
            match q.get(get_json("sums", k)).await {
                Ok(r) if value_of(r.get_ref()) == Some(*v) => {}
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return;
        }
        assert!(Instant::now() < end, "sums did not converge to {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("an error status");
    (s.code(), s.message().to_string())
}

struct Fixture {
    _kafka: EmbeddedKafka,
    _state: tempfile::TempDir,
    app: RunningApp,
    /// After phase 1 converged, before phase 2.
    t_mid: u64,
    phase1: BTreeMap<String, i64>,
    phase2: BTreeMap<String, i64>,
}

/// Phase 1: three rounds of +1..+3 per key. Phase 2: +10 on the first ten
/// keys.
async fn fixture() -> Fixture {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", PARTITIONS).unwrap();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&kafka, "grpc", state.path());
    kafka
        .create_app_topics(&cfg, &topology(), PARTITIONS)
        .unwrap();
    let app = tokio::task::block_in_place(|| {
        let app = App::new(cfg).unwrap().start(topology()).unwrap();
        app.wait_running(PARTITIONS as usize, Duration::from_secs(60))
            .unwrap();
        app
    });
    let addr = app.grpc_addr().expect("grpc server");
    let (mut q, _, _) = clients(addr).await;

    let mut phase1 = BTreeMap::new();
    for round in 1..=3i64 {
        let recs: Vec<(String, i64)> = (0..KEYS).map(|i| (key(i), round)).collect();
        produce_numbers(&kafka.bootstrap_servers(), &recs);
        for (k, v) in recs {
            *phase1.entry(k).or_insert(0) += v;
        }
        // Separate commits, so every round is its own version of each key.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_sums(&mut q, &phase1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t_mid = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let recs: Vec<(String, i64)> = (0..10).map(|i| (key(i), 10)).collect();
    produce_numbers(&kafka.bootstrap_servers(), &recs);
    let mut phase2 = phase1.clone();
    for (k, v) in recs {
        *phase2.get_mut(&k).unwrap() += v;
    }
    wait_sums(&mut q, &phase2).await;
    Fixture {
        _kafka: kafka,
        _state: state,
        app,
        t_mid,
        phase1,
        phase2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_served_locally_with_the_error_contract() {
    let f = fixture().await;
    let addr = f.app.grpc_addr().unwrap();
    let (mut q, mut admin, ch) = clients(addr).await;

    // Get by JSON key and by key bytes: the same entry, JSON and bytes agree.
    let by_json = q.get(get_json("sums", "k13")).await.unwrap().into_inner();
    let by_bytes = q
        .get(pb::GetRequest {
            table: "sums".into(),
            key_ref: Some(pb::get_request::KeyRef::Key(
                "k13".to_string().to_key_bytes(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_json, by_bytes);
    let e = found(&by_json).unwrap();
    assert_eq!(e.value_json, "6");
    assert_eq!(ValueCodec::<i64>::decode(&Bincode, &e.value).unwrap(), 6);
    assert_eq!(by_json.key_json, "\"k13\"");
    assert_eq!(by_json.key, b"k13".to_vec());
    let served = by_json.served.clone().unwrap();
    assert_eq!(served.read_version, served.latest_version);
    assert_eq!(
        served.instance.as_ref().unwrap().endpoint,
        format!("http://{addr}")
    );
    assert!(e.lineage.as_ref().is_some_and(|l| l.topic == "events"));
    let p13 = served.partition;
    // A key never written is absent, not an error.
    assert!(found(&q.get(get_json("sums", "nope")).await.unwrap().into_inner()).is_none());
    // JSON only: no bytes.
    let mut req = get_json("sums", "k13");
    req.options = Some(pb::RequestOptions {
        representation: pb::Representation::Json as i32,
        ..Default::default()
    });
    let r = q.get(req).await.unwrap().into_inner();
    assert!(
        r.key.is_empty()
            && found(&r).unwrap().value.is_empty()
            && found(&r).unwrap().value_json == "6"
    );

    // History of k00: newest first by default, values 16, 6, 3, 1.
    let h = q
        .history(pb::HistoryRequest {
            table: "sums".into(),
            key_ref: Some(pb::history_request::KeyRef::KeyJson("\"k00\"".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let vals: Vec<i64> = h
        .entries
        .iter()
        .map(|e| e.value_json.parse().unwrap())
        .collect();
    assert_eq!(vals, vec![16, 6, 3, 1]);
    assert!(h.entries.windows(2).all(|w| w[0].version > w[1].version));
    assert!(h.next_page_token.is_empty() && !h.truncated_by_retention);
    let versions: Vec<u64> = h.entries.iter().map(|e| e.version).rev().collect();
    // Ascending in pages of 3.
    let mut pages = Vec::new();
    let mut token = Vec::new();
    loop {
        let r = q
            .history(pb::HistoryRequest {
                table: "sums".into(),
                key_ref: Some(pb::history_request::KeyRef::KeyJson("\"k00\"".into())),
                order: pb::Order::Ascending as i32,
                limit: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(r.entries.iter().map(|e| e.version).collect::<Vec<_>>());
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, vec![versions[..3].to_vec(), versions[3..].to_vec()]);
    // A token replayed with other arguments is refused.
    let first = q
        .history(pb::HistoryRequest {
            table: "sums".into(),
            key_ref: Some(pb::history_request::KeyRef::KeyJson("\"k00\"".into())),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (c, m) = code(
        q.history(pb::HistoryRequest {
            table: "sums".into(),
            key_ref: Some(pb::history_request::KeyRef::KeyJson("\"k01\"".into())),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");

    // Get at a version (k00's second version: 1 + 2) and as of a time.
    let mut req = get_json("sums", "k00");
    req.at = at_version(versions[1]);
    let r = q.get(req).await.unwrap().into_inner();
    assert_eq!(value_of(&r), Some(3));
    assert_eq!(r.served.unwrap().read_version, versions[1]);
    let mut req = get_json("sums", "k00");
    req.at = at_time(f.t_mid);
    assert_eq!(
        value_of(&q.get(req).await.unwrap().into_inner()),
        Some(f.phase1["k00"])
    );
    let mut req = get_json("sums", "k29");
    req.at = at_time(f.t_mid);
    assert_eq!(
        value_of(&q.get(req).await.unwrap().into_inner()),
        Some(f.phase1["k29"])
    );

    // Scan every partition in pages of 7: every key exactly once, in key
    // order within and across pages, with its latest value.
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut token = Vec::new();
    let mut pages = 0;
    loop {
        let r = q
            .scan(pb::ScanRequest {
                table: "sums".into(),
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.partial && r.unavailable.is_empty());
        assert!(r.items.len() <= 7);
        // Every partition on the first page; those finished are not read again.
        assert!(
            r.served.len() <= PARTITIONS as usize
                && (pages > 0 || r.served.len() == PARTITIONS as usize)
        );
        for it in &r.items {
            seen.push((
                serde_json::from_str(&it.key_json).unwrap(),
                it.entry.as_ref().unwrap().value_json.parse().unwrap(),
            ));
        }
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert!(pages >= KEYS / 7);
    let want: Vec<(String, i64)> = f.phase2.iter().map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(seen, want);
    // A scan as of a time and a prefix: phase 1's values of k0*.
    let r = q
        .scan(pb::ScanRequest {
            table: "sums".into(),
            keys: Some(pb::KeyFilter {
                filter: Some(pb::key_filter::Filter::PrefixUtf8("k0".into())),
            }),
            at: at_time(f.t_mid),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: BTreeMap<String, i64> = r
        .items
        .iter()
        .map(|i| {
            (
                serde_json::from_str(&i.key_json).unwrap(),
                i.entry.as_ref().unwrap().value_json.parse().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<String, i64> = f
        .phase1
        .iter()
        .filter(|(k, _)| k.starts_with("k0"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(got, want);
    // One partition at a version is allowed; at a version over all is not.
    let (c, m) = code(
        q.scan(pb::ScanRequest {
            table: "sums".into(),
            at: at_version(1),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let r = q
        .scan(pb::ScanRequest {
            table: "sums".into(),
            partition: Some(p13),
            at: at_version(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.get_ref().items.len(), 1, "one key written by version 1");

    // Diff from the middle to now, in pages of 3: exactly phase 2's keys,
    // with both values.
    let mut changed = BTreeMap::new();
    let mut token = Vec::new();
    loop {
        let r = q
            .diff(pb::DiffRequest {
                table: "sums".into(),
                from: at_time(f.t_mid),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 3 && !r.partial);
        assert_eq!(r.from_versions.len(), PARTITIONS as usize);
        for d in &r.entries {
            let k: String = serde_json::from_str(&d.key_json).unwrap();
            let before: i64 = d.before.as_ref().unwrap().value_json.parse().unwrap();
            let after: i64 = d.after.as_ref().unwrap().value_json.parse().unwrap();
            assert!(changed.insert(k, (before, after)).is_none(), "a key twice");
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let want: BTreeMap<String, (i64, i64)> = (0..10)
        .map(|i| (key(i), (f.phase1[&key(i)], f.phase2[&key(i)])))
        .collect();
    assert_eq!(changed, want);
    let (c, m) = code(
        q.diff(pb::DiffRequest {
            table: "sums".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");

    // ListTables and DescribeTable.
    let t = q
        .list_tables(pb::ListTablesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = t.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["last", "sums"]);
    assert_eq!(
        t.tables[0].retention.unwrap().policy,
        Some(pb::retention::Policy::LastVersions(1))
    );
    assert!(
        t.tables
            .iter()
            .all(|t| t.partitions == PARTITIONS && t.json && t.input_topics == ["events"])
    );
    assert_eq!(t.tables[1].changelog_topic, "grpc-sums-changelog");
    let d = q
        .describe_table(pb::DescribeTableRequest {
            table: "sums".into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.partitions.len(), PARTITIONS as usize);
    for p in &d.partitions {
        assert_eq!(
            p.state,
            Some(pb::partition_info::State::Running(pb::Running {}))
        );
        assert!(p.latest_version > 0 && p.latest_time_ms > 0);
        assert_eq!(p.oldest_version, 0, "unlimited retention keeps everything");
        assert_eq!(p.owner.as_ref().unwrap().endpoint, format!("http://{addr}"));
    }

    // Rewind k05 to the middle: dry run, then a stale expectation, then
    // apply; the latest value is phase 1's again, flagged as a rewind.
    let k05 = Some(pb::KeyFilter {
        filter: Some(pb::key_filter::Filter::KeyJson("\"k05\"".into())),
    });
    let rw = |dry_run: bool, expect: Vec<pb::PartitionVersion>| pb::RewindRequest {
        table: "sums".into(),
        keys: k05.clone(),
        to: at_time(f.t_mid),
        dry_run,
        expect_latest: expect,
        ..Default::default()
    };
    let plan = admin.rewind(rw(true, vec![])).await.unwrap().into_inner();
    assert!(plan.dry_run);
    let pr = &plan.partitions[0];
    assert_eq!(plan.partitions.len(), 1);
    assert_eq!(pr.status, pb::RewindStatus::Planned as i32);
    assert_eq!(pr.change_count, 1);
    assert_eq!(pr.changes[0].key_json, "\"k05\"");
    assert_eq!(
        pr.changes[0].current.as_ref().unwrap().value_json,
        f.phase2["k05"].to_string()
    );
    assert_eq!(
        pr.changes[0].restored.as_ref().unwrap().value_json,
        f.phase1["k05"].to_string()
    );
    assert_eq!(
        value_of(&q.get(get_json("sums", "k05")).await.unwrap().into_inner()),
        Some(f.phase2["k05"]),
        "a dry run changes nothing"
    );
    let stale = vec![pb::PartitionVersion {
        partition: pr.partition,
        version: pr.from_version.saturating_sub(1),
    }];
    let (c, m) = code(admin.rewind(rw(false, stale)).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    let expect = vec![pb::PartitionVersion {
        partition: pr.partition,
        version: pr.from_version,
    }];
    let done = admin.rewind(rw(false, expect)).await.unwrap().into_inner();
    let dr = &done.partitions[0];
    assert_eq!(dr.status, pb::RewindStatus::Applied as i32, "{dr:?}");
    let nv = dr.new_versions.unwrap();
    assert_eq!(
        (nv.first, nv.last),
        (pr.from_version + 1, pr.from_version + 1)
    );
    assert!(dr.commit_time_ms >= f.t_mid);
    let r = q.get(get_json("sums", "k05")).await.unwrap().into_inner();
    let e = found(&r).unwrap();
    assert_eq!(e.value_json, f.phase1["k05"].to_string());
    assert_eq!(e.version, nv.first);
    assert!(e.flags.unwrap().rewind && e.lineage.is_none());
    // The rewind's versions are history like any other.
    let h = q
        .history(pb::HistoryRequest {
            table: "sums".into(),
            key_ref: Some(pb::history_request::KeyRef::KeyJson("\"k05\"".into())),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(h.entries[0].flags.unwrap().rewind);
    // A replay rewinds whole partitions (no key filter); a version target
    // needs one partition; latest is no target.
    let mut req = rw(true, vec![]);
    req.replay = true;
    assert_eq!(code(admin.rewind(req).await).0, Code::InvalidArgument);
    let (c, m) = code(
        admin
            .rewind(pb::RewindRequest {
                table: "sums".into(),
                to: at_version(1),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert_eq!(
        code(
            admin
                .rewind(pb::RewindRequest {
                    table: "sums".into(),
                    ..Default::default()
                })
                .await
        )
        .0,
        Code::InvalidArgument
    );

    // The error contract, case by case.
    let (c, m) = code(q.get(get_json("nope", "k00")).await);
    assert_eq!(c, Code::NotFound, "{m}");
    assert!(m.contains("sums"), "names the tables: {m}");
    assert_eq!(
        code(
            q.describe_table(pb::DescribeTableRequest {
                table: "nope".into(),
                options: None
            })
            .await
        )
        .0,
        Code::NotFound
    );
    let mut bad = get_json("sums", "");
    bad.key_ref = Some(pb::get_request::KeyRef::KeyJson("{nope".into()));
    let (c, m) = code(q.get(bad).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("key_json"), "{m}");
    let mut wrong_type = get_json("sums", "");
    wrong_type.key_ref = Some(pb::get_request::KeyRef::KeyJson("5".into()));
    assert_eq!(code(q.get(wrong_type).await).0, Code::InvalidArgument);
    assert_eq!(
        code(
            q.get(pb::GetRequest {
                table: "sums".into(),
                ..Default::default()
            })
            .await
        )
        .0,
        Code::InvalidArgument
    );
    let mut future = get_json("sums", "k00");
    future.at = at_version(1_000_000);
    let s = q.get(future).await.expect_err("future version");
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("latest version"), "{}", s.message());
    let detail = pb::ErrorDetail::decode(
        s.metadata()
            .get_bin("strata-error-detail-bin")
            .unwrap()
            .to_bytes()
            .unwrap(),
    )
    .unwrap();
    assert!(detail.latest_version.is_some_and(|v| v > 0) && detail.table == "sums");
    // `last` keeps one version per key: k00 as of the middle was
    // overwritten since, so that state is gone.
    let mut old = get_json("last", "k00");
    old.at = at_time(f.t_mid);
    let (c, m) = code(q.get(old).await);
    assert_eq!(c, Code::OutOfRange, "{m}");
    assert!(m.contains("retention"), "{m}");
    // k20 was not written since: its value then is its latest, still kept.
    let mut kept = get_json("last", "k20");
    kept.at = at_time(f.t_mid);
    assert_eq!(value_of(&q.get(kept).await.unwrap().into_inner()), Some(3));

    // Malformed protobuf: a field claiming more bytes than there are.
    let (c, m) = raw_unary(ch.clone(), "/strata.v1.Query/Get", vec![0x0A, 0x10, b'x']).await;
    assert_eq!(c, Code::InvalidArgument, "{m}");
    // Oversized request (the bound is 1 MiB here).
    let mut huge = get_json("sums", "");
    huge.key_ref = Some(pb::get_request::KeyRef::KeyJson(format!(
        "\"{}\"",
        "x".repeat(2 << 20)
    )));
    let (c, m) = raw_unary(ch.clone(), "/strata.v1.Query/Get", huge.encode_to_vec()).await;
    assert_eq!(c, Code::ResourceExhausted, "{m}");
    // Subscribe to an unknown table: NOT_FOUND before any stream.
    let Err(s) = q
        .subscribe(pb::SubscribeRequest {
            table: "nope".into(),
            ..Default::default()
        })
        .await
    else {
        panic!("Subscribe answered a stream")
    };
    assert_eq!(s.code(), Code::NotFound);

    // Health and reflection.
    assert_serving(ch.clone()).await;
    let resp = list_services(ch.clone()).await;
    let services: BTreeSet<String> = match resp.message_response.unwrap() {
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(l) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("{other:?}"),
    };
    for s in [
        "strata.v1.Query",
        "strata.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(s), "{services:?}");
    }

    drop((q, admin, ch));
    tokio::task::block_in_place(move || f.app.shutdown().unwrap());
}

/// Sends `body` as the request message of `path` without encoding it, and
/// returns the status.
async fn raw_unary(ch: Channel, path: &'static str, body: Vec<u8>) -> (Code, String) {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let r = grpc
        .unary(
            tonic::Request::new(body),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await;
    code(r)
}

/// A codec that sends bytes as they are and reads replies as bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Two instances share the partitions: each serves its own, reports the
/// others as unavailable (forwarding comes later), and the two partial
/// scans together hold every key exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_anywhere_are_routed_to_the_owner() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", PARTITIONS).unwrap();
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca = config(&kafka, "pair", sa.path());
    ca.instance_id = Some("a".into());
    let mut cb = config(&kafka, "pair", sb.path());
    cb.instance_id = Some("b".into());
    kafka
        .create_app_topics(&ca, &topology(), PARTITIONS)
        .unwrap();
    let recs: Vec<(String, i64)> = (0..KEYS).map(|i| (key(i), i as i64)).collect();
    produce_numbers(&kafka.bootstrap_servers(), &recs);
    let running = |app: &RunningApp| -> BTreeSet<u32> {
        app.registry()
            .partitions()
            .into_iter()
            .filter(|(t, _, s)| t == "sums" && *s == strata::PartitionState::Running)
            .map(|(_, p, _)| p.0)
            .collect()
    };
    let (a, b) = tokio::task::block_in_place(|| {
        let a = App::new(ca).unwrap().start(topology()).unwrap();
        a.wait_running(PARTITIONS as usize, Duration::from_secs(60))
            .unwrap();
        let b = App::new(cb).unwrap().start(topology()).unwrap();
        // Wait for the rebalance to settle and both directories to say
        // so: every partition running on exactly one of the two, each
        // with some, and both directories naming those owners.
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let (pa, pb) = (running(&a), running(&b));
            let agreed = |app: &RunningApp| {
                (0..PARTITIONS).all(|p| {
                    let want = if pa.contains(&p) { "a" } else { "b" };
                    app.directory()
                        .owner(strata_state::Partition(p))
                        .is_some_and(|o| {
                            o.member == want && o.state == strata::PartitionState::Running
                        })
                })
            };
            if !pa.is_empty()
                && !pb.is_empty()
                && pa.is_disjoint(&pb)
                && pa.len() + pb.len() == PARTITIONS as usize
                && agreed(&a)
                && agreed(&b)
            {
                break;
            }
            assert!(
                Instant::now() < end,
                "no settled assignment: a {pa:?}, b {pb:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        (a, b)
    });
    let owner_of = |k: &str| {
        let p = a.partition_of("sums", k.as_bytes()).expect("routable").0;
        if running(&a).contains(&p) { "a" } else { "b" }
    };
    for (app, me) in [(&a, "a"), (&b, "b")] {
        let (mut q, mut adm, _) = clients(app.grpc_addr().unwrap()).await;
        // Converged: every key from this instance, with its value, served
        // by its owner (forwarded once when that is the other).
        let end = Instant::now() + Duration::from_secs(60);
        'keys: loop {
            for i in 0..KEYS {
                let k = key(i);
                let r = q.get(get_json("sums", &k)).await.unwrap().into_inner();
                let served = r.served.unwrap();
                let owner = owner_of(&k);
                assert_eq!(served.instance.as_ref().unwrap().id, owner, "{k} from {me}");
                assert_eq!(served.hops, u32::from(owner != me), "{k} from {me}");
                let v = match r.outcome {
                    Some(pb::get_response::Outcome::Found(e)) => {
                        e.value_json.parse::<i64>().unwrap()
                    }
                    _ => -1,
                };
                if v != i as i64 {
                    assert!(Instant::now() < end, "{k} from {me}: {v}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'keys;
                }
                // History is routed too.
                let h = q
                    .history(pb::HistoryRequest {
                        table: "sums".into(),
                        key_ref: Some(pb::history_request::KeyRef::KeyJson(
                            serde_json::to_string(&k).unwrap(),
                        )),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(h.entries.len(), 1, "{k}");
                assert_eq!(h.served.unwrap().instance.unwrap().id, owner);
            }
            break;
        }
        // A scan over every partition, in small pages, gathers every key
        // exactly once and in key order, from both owners.
        let mut keys = Vec::new();
        let mut token = Vec::new();
        let mut servers = BTreeSet::new();
        loop {
            let r = q
                .scan(pb::ScanRequest {
                    table: "sums".into(),
                    page_size: 7,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!r.partial, "{:?}", r.unavailable);
            assert!(r.items.len() <= 7);
            keys.extend(r.items.iter().map(|i| i.key_json.clone()));
            servers.extend(
                r.served
                    .iter()
                    .map(|s| s.instance.as_ref().unwrap().id.clone()),
            );
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let want: Vec<String> = (0..KEYS).map(|i| format!("\"{}\"", key(i))).collect();
        assert_eq!(keys, want, "every key exactly once, in order, from {me}");
        assert_eq!(servers, BTreeSet::from(["a".to_string(), "b".to_string()]));
        // Diff from the beginning across partitions: every key, once.
        let d = q
            .diff(pb::DiffRequest {
                table: "sums".into(),
                from: at_time(1),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!d.partial);
        assert_eq!(d.entries.len(), KEYS);
        assert_eq!(d.from_versions.len(), PARTITIONS as usize);
        // DescribeTable names every partition's owner and its versions.
        let desc = q
            .describe_table(pb::DescribeTableRequest {
                table: "sums".into(),
                options: None,
            })
            .await
            .unwrap()
            .into_inner();
        for p in &desc.partitions {
            assert!(
                matches!(p.state, Some(pb::partition_info::State::Running(_))),
                "{p:?}"
            );
            let want = if running(&a).contains(&p.partition) {
                "a"
            } else {
                "b"
            };
            assert_eq!(p.owner.as_ref().unwrap().id, want);
            assert!(p.latest_version > 0, "{p:?}");
        }
        // A key owned elsewhere, with no hop left: UNAVAILABLE, saying why.
        let other = (0..KEYS).map(key).find(|k| owner_of(k) != me).unwrap();
        let mut req = get_json("sums", &other);
        req.options = Some(pb::RequestOptions {
            max_hops: 1,
            hops: 1,
            ..Default::default()
        });
        let s = q.get(req).await.expect_err("out of hops");
        assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
        assert!(s.message().contains("forwarded"), "{}", s.message());
        // A deadline too short to forward: DEADLINE_EXCEEDED.
        let mut req = tonic::Request::new(get_json("sums", &other));
        req.set_timeout(Duration::from_millis(3));
        let s = q.get(req).await.expect_err("too late to forward");
        assert_eq!(s.code(), Code::DeadlineExceeded, "{}", s.message());
        // Errors of the owner come back as they are: unknown table.
        let s = q.get(get_json("nope", &other)).await.expect_err("no table");
        assert_eq!(s.code(), Code::NotFound);
        // A dry-run rewind of every partition reaches both owners.
        let r = adm
            .rewind(pb::RewindRequest {
                table: "sums".into(),
                to: at_time(1),
                dry_run: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.partitions.len(), PARTITIONS as usize);
        let planned: u64 = r.partitions.iter().map(|p| p.change_count).sum();
        assert_eq!(planned, KEYS as u64, "{r:?}");
        assert!(
            r.partitions
                .iter()
                .all(|p| p.status == pb::RewindStatus::Planned as i32)
        );
    }
    tokio::task::block_in_place(move || {
        b.shutdown().unwrap();
        a.shutdown().unwrap();
    });
}

/// Reads a feed until every partition's cursor reaches `until`, checking
/// each partition's versions arrive in order, once, with no gap after
/// `from`; returns the changes and the last cursor.
async fn read_feed(
    feed: &mut tonic::Streaming<pb::SubscribeResponse>,
    from: &BTreeMap<u32, u64>,
    until: &BTreeMap<u32, u64>,
) -> (Vec<pb::Change>, pb::Cursor) {
    let mut next: BTreeMap<u32, u64> = from.iter().map(|(p, v)| (*p, v + 1)).collect();
    let mut changes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = tokio::time::timeout_at(deadline.into(), feed.message())
            .await
            .expect("the feed reached the end in time")
            .unwrap()
            .expect("the feed is open");
        for c in &m.changes {
            let v = c.entry.as_ref().unwrap().version;
            let want = next.get_mut(&c.partition).unwrap();
            assert_eq!(v, *want, "partition {} in order, once, no gap", c.partition);
            *want += 1;
        }
        changes.extend(m.changes);
        let cursor = m.resume.unwrap();
        let at: BTreeMap<u32, u64> = cursor
            .positions
            .iter()
            .map(|pv| (pv.partition, pv.version))
            .collect();
        for (p, v) in &at {
            assert_eq!(
                next[p],
                v + 1,
                "the cursor of partition {p} is where its changes stopped"
            );
        }
        if until.iter().all(|(p, v)| at.get(p).is_some_and(|a| a >= v)) {
            return (changes, cursor);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_delivers_every_committed_change_once_in_order() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", PARTITIONS).unwrap();
    let state = tempfile::tempdir().unwrap();
    let c = config(&kafka, "feed", state.path());
    kafka
        .create_app_topics(&c, &topology(), PARTITIONS)
        .unwrap();
    let first: Vec<(String, i64)> = (0..KEYS).map(|i| (key(i), 1)).collect();
    produce_numbers(&kafka.bootstrap_servers(), &first);
    let app = tokio::task::block_in_place(|| {
        let app = App::new(c).unwrap().start(topology()).unwrap();
        app.wait_running(PARTITIONS as usize, Duration::from_secs(60))
            .unwrap();
        app
    });
    let latest = |app: &RunningApp| -> BTreeMap<u32, u64> {
        (0..PARTITIONS)
            .map(|p| {
                (
                    p,
                    app.registry()
                        .reader("sums", strata_state::Partition(p))
                        .unwrap()
                        .latest_version()
                        .0,
                )
            })
            .collect()
    };
    // Wait until the first batch is committed.
    let end = Instant::now() + Duration::from_secs(60);
    while latest(&app).values().sum::<u64>() < KEYS as u64 {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut q, _, _) = clients(app.grpc_addr().unwrap()).await;
    // From the oldest kept version (an empty cursor), in small batches.
    let mut feed = q
        .subscribe(pb::SubscribeRequest {
            table: "sums".into(),
            start: Some(pb::subscribe_request::Start::After(pb::Cursor::default())),
            max_batch: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let zero: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let now = latest(&app);
    let (backlog, cursor) = read_feed(&mut feed, &zero, &now).await;
    assert_eq!(backlog.len() as u64, now.values().sum::<u64>());
    let mut keys: Vec<String> = backlog.iter().map(|c| c.key_json.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), KEYS, "every key's first version");
    // New commits arrive on the open feed.
    let second: Vec<(String, i64)> = (0..KEYS).map(|i| (key(i), 10)).collect();
    produce_numbers(&kafka.bootstrap_servers(), &second);
    let end = Instant::now() + Duration::from_secs(60);
    while latest(&app).values().sum::<u64>() < 2 * KEYS as u64 {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let from: BTreeMap<u32, u64> = cursor
        .positions
        .iter()
        .map(|pv| (pv.partition, pv.version))
        .collect();
    let (live, _) = read_feed(&mut feed, &from, &latest(&app)).await;
    assert_eq!(live.len(), KEYS);
    assert!(
        live.iter()
            .all(|c| c.entry.as_ref().unwrap().value_json == "11"),
        "{live:?}"
    );
    drop(feed);
    // Resuming from the first cursor delivers exactly the rest.
    let mut again = q
        .subscribe(pb::SubscribeRequest {
            table: "sums".into(),
            start: Some(pb::subscribe_request::Start::After(cursor.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (rest, _) = read_feed(&mut again, &from, &latest(&app)).await;
    assert_eq!(rest.len(), KEYS);
    drop(again);
    // One key, from a time before everything: its two versions.
    let mut one = q
        .subscribe(pb::SubscribeRequest {
            table: "sums".into(),
            start: Some(pb::subscribe_request::Start::FromTimeMs(1)),
            keys: Some(pb::KeyFilter {
                filter: Some(pb::key_filter::Filter::KeyJson("\"k07\"".into())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), one.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend(m.changes.into_iter().map(|c| c.entry.unwrap().value_json));
    }
    assert_eq!(got, ["1", "11"]);
    // A cursor past the latest version: INVALID_ARGUMENT on the stream.
    let mut ahead = q
        .subscribe(pb::SubscribeRequest {
            table: "sums".into(),
            partition: Some(0),
            start: Some(pb::subscribe_request::Start::After(pb::Cursor {
                positions: vec![pb::PartitionVersion {
                    partition: 0,
                    version: 1_000_000,
                }],
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = tokio::time::timeout(Duration::from_secs(30), ahead.message())
        .await
        .unwrap()
        .expect_err("ahead");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    tokio::task::block_in_place(move || app.shutdown().unwrap());
}

/// A partition restoring from its changelog answers UNAVAILABLE with its
/// progress, unless the caller accepts a stale read, which is then served
/// from what is restored so far and marked stale with its lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restoring_partition_is_unavailable_unless_stale_reads_are_allowed() {
    const N: usize = 150_000;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", 1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut c = config(&kafka, "stale", state.path());
    kafka.create_app_topics(&c, &topology(), 1).unwrap();
    // One key, many versions: a long changelog.
    let recs: Vec<(String, i64)> = (0..N).map(|_| ("hot".to_string(), 1)).collect();
    produce_numbers(&kafka.bootstrap_servers(), &recs);
    tokio::task::block_in_place(|| {
        let app = App::new(c.clone()).unwrap().start(topology()).unwrap();
        app.wait_running(1, Duration::from_secs(60)).unwrap();
        let end = Instant::now() + Duration::from_secs(120);
        while app
            .registry()
            .reader("sums", strata_state::Partition(0))
            .is_none_or(|r| r.latest_version().0 < N as u64)
        {
            assert!(Instant::now() < end, "input not processed");
            std::thread::sleep(Duration::from_millis(50));
        }
        app.shutdown().unwrap();
    });
    // Lose the local state: the next start rebuilds it from the changelog,
    // one record per batch, slowly enough to be seen restoring.
    std::fs::remove_dir_all(state.path()).unwrap();
    std::fs::create_dir_all(state.path()).unwrap();
    c.restore_batch = 1;
    let app = tokio::task::block_in_place(|| App::new(c).unwrap().start(topology()).unwrap());
    let (mut q, _, _) = clients(app.grpc_addr().unwrap()).await;
    let end = Instant::now() + Duration::from_secs(60);
    let (mut refused, mut stale) = (None, None);
    while refused.is_none() || stale.is_none() {
        assert!(Instant::now() < end, "never saw the partition restoring");
        let restoring = app
            .registry()
            .partitions()
            .iter()
            .any(|(_, _, s)| matches!(s, strata::PartitionState::Restoring { records, .. } if *records > 0));
        if !restoring {
            assert!(
                app.registry()
                    .reader("sums", strata_state::Partition(0))
                    .is_none(),
                "the restore finished before it could be observed; lower its speed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        if refused.is_none()
            && let Err(s) = q.get(get_json("sums", "hot")).await
        {
            refused = Some(s);
        }
        let mut r = get_json("sums", "hot");
        r.options = Some(pb::RequestOptions {
            allow_stale: true,
            ..Default::default()
        });
        if stale.is_none()
            && let Ok(r) = q.get(r).await
            && r.get_ref().served.as_ref().is_some_and(|s| s.stale)
        {
            stale = Some(r.into_inner());
        }
    }
    let s = refused.unwrap();
    assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    assert!(s.message().contains("restoring"), "{}", s.message());
    let detail = s
        .metadata()
        .get_bin("strata-error-detail-bin")
        .map(|v| <pb::ErrorDetail as Message>::decode(v.to_bytes().unwrap()).unwrap())
        .expect("progress in the detail");
    assert!(detail.restoring.is_some_and(|r| r.records > 0));
    let r = stale.unwrap();
    let served = r.served.unwrap();
    assert!(served.stale);
    assert!(served.lag_records > 0, "{served:?}");
    // What it served is a real, older state of the key.
    let v: i64 = match r.outcome {
        Some(pb::get_response::Outcome::Found(e)) => e.value_json.parse().unwrap(),
        _ => 0,
    };
    assert!(
        v < N as i64 && served.read_version < N as u64,
        "{v} at {served:?}"
    );
    // Once restored, reads are current again and not stale.
    tokio::task::block_in_place(|| app.wait_running(1, Duration::from_secs(120)).unwrap());
    let r = q.get(get_json("sums", "hot")).await.unwrap().into_inner();
    assert!(!r.served.unwrap().stale);
    match r.outcome {
        Some(pb::get_response::Outcome::Found(e)) => assert_eq!(e.value_json, N.to_string()),
        o => panic!("{o:?}"),
    }
    tokio::task::block_in_place(move || app.shutdown().unwrap());
}

/// A task restoring a long changelog does not hold up the other tasks of
/// its worker: with one worker thread, a second partition is restored,
/// processes new input and commits while the first is still restoring.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_restore_does_not_block_the_other_tasks_of_its_worker() {
    const N: usize = 150_000;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", 2).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut c = config(&kafka, "restore-aside", state.path());
    c.worker_threads = 1;
    kafka.create_app_topics(&c, &topology(), 2).unwrap();
    let part = |k: &str| strata::partitioner::partition_for(k.as_bytes(), 2).0;
    let hot = "hot".to_string();
    let cold = (0..)
        .map(|i| format!("cold-{i}"))
        .find(|k| part(k) != part(&hot))
        .unwrap();
    let mut recs: Vec<(String, i64)> = (0..N).map(|_| (hot.clone(), 1)).collect();
    recs.push((cold.clone(), 1));
    produce_numbers(&kafka.bootstrap_servers(), &recs);
    let value = |app: &RunningApp, k: &str| -> Option<i64> {
        let r = app
            .registry()
            .reader("sums", strata_state::Partition(part(k)))?;
        let v = r.get(k.as_bytes()).unwrap()?;
        Some(ValueCodec::<i64>::decode(&Bincode, &v.value).unwrap())
    };
    tokio::task::block_in_place(|| {
        let app = App::new(c.clone()).unwrap().start(topology()).unwrap();
        let end = Instant::now() + Duration::from_secs(120);
        while value(&app, &hot) != Some(N as i64) || value(&app, &cold) != Some(1) {
            assert!(Instant::now() < end, "input not processed");
            std::thread::sleep(Duration::from_millis(50));
        }
        app.shutdown().unwrap();
    });
    // Lose the local state; restore one record per batch, slowly.
    std::fs::remove_dir_all(state.path()).unwrap();
    std::fs::create_dir_all(state.path()).unwrap();
    c.restore_batch = 1;
    produce_numbers(&kafka.bootstrap_servers(), &[(cold.clone(), 41)]);
    tokio::task::block_in_place(|| {
        let app = App::new(c).unwrap().start(topology()).unwrap();
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let hot_state = app
                .registry()
                .partitions()
                .into_iter()
                .find(|(t, p, _)| t == "sums" && p.0 == part(&hot))
                .map(|(_, _, s)| s);
            if value(&app, &cold) == Some(42) {
                // The cold partition is restored and has processed its new
                // record; the hot one must still be restoring.
                assert!(
                    matches!(hot_state, Some(strata::PartitionState::Restoring { .. })),
                    "the hot partition finished restoring first ({hot_state:?}); lower its restore speed"
                );
                break;
            }
            assert!(
                Instant::now() < end,
                "the cold partition never caught up while the hot one restored ({hot_state:?})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // And the hot one finishes with everything.
        app.wait_running(2, Duration::from_secs(120)).unwrap();
        assert_eq!(value(&app, &hot), Some(N as i64));
        app.shutdown().unwrap();
    });
}
